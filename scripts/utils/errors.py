"""Errors as the one line a user reads in a log or in ``errors.csv``."""

from __future__ import annotations

import os

__all__ = ["bundle_cause", "error_reason", "innermost", "short_tracebacks"]


def innermost(error: BaseException) -> BaseException:
    """The last error of ``error``'s ``__cause__`` chain (MONAI wraps transform errors in RuntimeErrors)."""
    return _cause_chain(error)[-1]


def _cause_chain(error: BaseException) -> list[BaseException]:
    """``error`` and its ``__cause__`` chain, outermost first."""
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    return chain


def error_reason(error: BaseException, path: str | os.PathLike | None = None) -> str:
    """``error`` as the one line of ``errors.csv``: ``Type: message`` of its :func:`bundle_cause`, every line of the
    message joined (a decoder's per-plugin reasons are on lines of their own), and a leading ``<path>: `` dropped
    (the file has a column of its own)."""
    cause = bundle_cause(error)
    message = ""
    for line in [line.strip() for line in str(cause).splitlines() if line.strip()]:
        message = f"{message}{' ' if message.endswith(':') else '; '}{line}" if message else line
    if path is not None and message.startswith(f"{path}: "):
        message = message[len(f"{path}: ") :]
    return f"{type(cause).__name__}: {message}" if message else type(cause).__name__


def short_tracebacks(debug: object = False) -> None:
    """From now on an uncaught error prints as one message, its innermost cause (``Type: message``, every line of
    it), instead of a long MONAI/Ignite traceback; ``debug`` (``--debug true``) or the environment variable
    ``SIIM_DEBUG=1`` keeps Python's full traceback."""
    import sys

    from scripts.utils.flags import as_flag

    if as_flag(debug, "debug") or as_flag(os.environ.get("SIIM_DEBUG", "0"), "SIIM_DEBUG"):
        sys.excepthook = sys.__excepthook__
        return

    def one_message(kind, error, traceback) -> None:
        if issubclass(kind, KeyboardInterrupt):  # Python still ends the process as SIGINT does
            print("interrupted (Ctrl-C)", file=sys.stderr)
            return
        cause = bundle_cause(error)
        text = str(cause).strip()
        print(f"error: {type(cause).__name__}: {text}" if text else f"error: {type(cause).__name__}", file=sys.stderr)
        print("(--debug true or SIIM_DEBUG=1 shows the full traceback)", file=sys.stderr)

    sys.excepthook = one_message


def bundle_cause(error: BaseException) -> BaseException:
    """The innermost error of ``error``'s ``__cause__`` chain that this bundle's own code raised (it names the file
    and the problem; MONAI wraps it in RuntimeErrors, and it wraps a library's error), else the innermost."""
    own = os.sep + "scripts" + os.sep
    chain = _cause_chain(error)
    for candidate in reversed(chain):
        frames = []
        traceback = candidate.__traceback__
        while traceback is not None:
            frames.append(traceback.tb_frame.f_code.co_filename)
            traceback = traceback.tb_next
        if frames and own in frames[-1]:
            return candidate
    return chain[-1]
