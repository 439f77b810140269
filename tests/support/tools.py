"""What a test does when a tool it needs (a server binary, a browser, locust) is missing.

On a workstation the test is skipped with the install hint; in CI (``CI=true``) it
fails, so a broken image can never pass by skipping.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["in_ci", "missing_tool"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_tool(reason: str) -> NoReturn:
    """Fail (CI) or skip (elsewhere) the current test because ``reason``."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this test must run)", pytrace=False)
    pytest.skip(reason)
