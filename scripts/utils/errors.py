"""Errors as the one line a user reads in a log or in ``errors.csv``."""

from __future__ import annotations

__all__ = ["error_reason"]


def error_reason(error: BaseException) -> str:
    """The innermost cause of ``error`` as ``Type: message`` (MONAI wraps transform errors in RuntimeErrors)."""
    while error.__cause__ is not None:
        error = error.__cause__
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
