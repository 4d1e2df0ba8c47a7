"""Helpers for reading what a user typed or wrote: close-match suggestions, checks of option values
and their types, and UTF-8 files."""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from collections import abc
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mlcl.errors import ConfigError, DataError


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """``" (did you mean 'a'?)"`` for the closest match of a misspelt name, or ``""``.

    Closest means the most similar spelling (difflib); failing that, for names of 3+ characters, the
    options containing the name or contained in it, ignoring case ('fine' -> 'fine_label').
    """
    name, options = str(name), [str(o) for o in options]
    matches = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if not matches and len(name) >= 3:
        low = name.lower()
        matches = [o for o in options if len(o) >= 3 and (low in o.lower() or o.lower() in low)][:2]
    matches = [m for m in matches if m != name]
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is an int >= 1, else a :class:`ConfigError` naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def fits_type(hint: Any, value: Any) -> tuple[bool, Any]:
    """Whether ``value`` (from YAML or a ``--set``) fits the type ``hint``, and the value to use.

    Ints are accepted (and converted) where floats are; floats must be finite (NaN would pass every
    range check); a single value where a ``list`` is expected becomes a one-item list (one per head);
    a string is accepted for a ``Path``.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            ok, converted = fits_type(option, value)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is Any:
        return True, value
    if origin is typing.Literal:
        return value in typing.get_args(hint), value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                return False, value
            return math.isfinite(number), number
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint in (str, bool):
        return isinstance(value, hint), value
    if hint is Path:
        return isinstance(value, (str, Path)), value
    if origin in (list, abc.Sequence):
        (item,) = typing.get_args(hint)
        if origin is list and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            return False, value
        converted = []
        for element in value:
            ok, element = fits_type(item, element)
            if not ok:
                return False, value
            converted.append(element)
        return True, converted
    if origin in (dict, abc.Mapping):
        if not isinstance(value, dict):
            return False, value
        key_type, value_type = typing.get_args(hint) or (Any, Any)
        ok = all(fits_type(key_type, k)[0] and fits_type(value_type, v)[0] for k, v in value.items())
        return ok, value
    if isinstance(hint, type):
        return isinstance(value, hint), value
    return False, value


def type_name(hint: Any) -> str:
    """A type hint as a user reads it: ``int | None``, ``list[float]``."""
    text = str(hint).replace("typing.", "").replace("collections.abc.", "").replace("pathlib.", "")
    return text.replace("<class '", "").replace("'>", "")


def check_options(func: Callable[..., Any], options: Mapping[str, Any], what: str,
                  skip: Iterable[str] = (), extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``options`` checked against ``func``'s keyword parameters before calling it: an unknown name
    (with a suggestion) or a value of the wrong type is a DataError naming the option. Returns the
    options with ints converted where floats are expected. ``skip`` names parameters the caller sets;
    ``extra`` (name -> type) adds options the caller takes out before calling ``func``."""
    hints = {**typing.get_type_hints(func), **(extra or {})}
    parameters = inspect.signature(func).parameters
    names = [name for name in parameters if name not in skip] + list(extra or {})
    checked = {}
    for name, value in options.items():
        if name not in names:
            raise DataError(
                f"unknown option {name!r} for {what}{did_you_mean(name, names)}; valid options: {', '.join(names)}"
            )
        ok, value = fits_type(hints.get(name, Any), value)
        if not ok:
            raise DataError(f"option {name!r} of {what} must be of type {type_name(hints[name])}, got {value!r}")
        checked[name] = value
    required = [name for name in names if name in parameters and parameters[name].default is inspect.Parameter.empty
                and parameters[name].kind is inspect.Parameter.KEYWORD_ONLY and name not in options]
    if required:
        raise DataError(f"{what} needs the option {required[0]!r} (of type {type_name(hints.get(required[0], Any))})")
    return checked


def read_utf8(path: str | Path, what: str = "file") -> str:
    """The text of a UTF-8 file (a BOM is dropped); DataError if missing or not UTF-8 (with its line)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}; check the path") from None
    except OSError as err:
        raise DataError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}, line {line}: not valid UTF-8 (byte 0x{data[err.start]:02x}); "
            "save the file as UTF-8"
        ) from None
