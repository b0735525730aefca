"""On/off options as they arrive from the command line.

``python -m monai.bundle run ... --tta true`` passes the *string* ``"true"`` (only ``True`` becomes a bool), and the
string ``"false"`` is truthy. Components that take a switch run it through :func:`as_flag`.
"""

from __future__ import annotations

__all__ = ["as_flag"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", "none", ""}


def as_flag(value: object, name: str = "flag") -> bool:
    """``True``/``False`` from a bool, a 0/1 number or a string such as ``"true"``, ``"False"``, ``"no"``.

    Raises:
        ValueError: anything else, naming the option.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")
