"""Tidings gateway node: ``create_app(settings)`` builds one node; ``Settings.from_env()`` configures it."""

from __future__ import annotations

from .app import create_app
from .config import Settings

__all__ = ["Settings", "create_app"]
