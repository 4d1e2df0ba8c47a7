"""Helpers for reading what a user typed or wrote: close-match suggestions and UTF-8 files."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

from mlcl.errors import DataError


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
