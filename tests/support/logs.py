"""Catch what a node logs at ERROR: a 500 or an unhandled exception always leaves a record there."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["ErrorLog", "error_log"]

# uvicorn's default log config stops its loggers from propagating: listen to them too.
_LOGGERS = ("", "uvicorn", "uvicorn.error")


class ErrorLog(logging.Handler):
    """Collects records at ERROR and above (tidings' own loggers, uvicorn's "Exception in ASGI application")."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [
            f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else r.getMessage()
            for r in self.records
        ]

    def clear(self) -> None:
        self.records.clear()


@contextlib.contextmanager
def error_log() -> Iterator[ErrorLog]:
    """Collect ERROR records from the root and uvicorn loggers while the block runs."""
    errors = ErrorLog()
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    for logger in loggers:
        logger.addHandler(errors)
    try:
        yield errors
    finally:
        for logger in loggers:
            logger.removeHandler(errors)
