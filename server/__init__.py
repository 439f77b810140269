"""Tidings gateway node: ``create_app(settings)`` builds one node; ``Settings.from_env()`` configures it."""

from __future__ import annotations

from tidings.server.config import Settings
from tidings.server.http.app import create_app

__all__ = ["Settings", "create_app"]
