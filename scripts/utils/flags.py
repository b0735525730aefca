"""On/off options as they arrive from the command line.

``python -m monai.bundle run ... --tta true`` passes the *string* ``"true"`` (only ``True`` becomes a bool), and the
string ``"false"`` is truthy. The rule: a switch is converted once, where it enters Python.

* The bundle's own components declare their switches with :func:`switches`: the constructor body only ever sees
  the converted bools, so a raw ``"false"`` cannot be tested by mistake.
* MONAI's classes (the engines' ``amp`` and ``compile``) get ``"$as_flag(@amp, 'amp')"`` in the config line that
  passes the switch to them.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

__all__ = ["as_flag", "switches"]

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


def switches(**names: str) -> Callable:
    """Decorate a constructor so that the named arguments arrive as bools, converted by :func:`as_flag`.

    ``@switches(resume="resume", flip_tta="tta")``: argument -> the option name the user knows, for the error
    message. Defaults are converted too.
    """

    def decorate(init: Callable) -> Callable:
        signature = inspect.signature(init)
        unknown = set(names) - set(signature.parameters)
        if unknown:
            raise TypeError(f"switches: {init.__qualname__} has no argument(s) {sorted(unknown)}")

        @functools.wraps(init)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            for argument, option in names.items():
                bound.arguments[argument] = as_flag(bound.arguments[argument], option)
            return init(*bound.args, **bound.kwargs)

        return wrapper

    return decorate
