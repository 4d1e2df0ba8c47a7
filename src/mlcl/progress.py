"""Progress on long work: tqdm bars on a terminal, nothing where output goes to a file or a pipe (a
redirected log would fill with carriage returns); plain lines for the steps worth a line either way."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def bar(enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar (``kwargs`` as for tqdm), shown only when ``enabled`` and stderr is a terminal."""
    return tqdm(disable=not (enabled and sys.stderr.isatty()), **kwargs)


def note(enabled: bool, text: str) -> None:
    """One progress line on stderr when ``enabled``."""
    if enabled:
        print(text, file=sys.stderr, flush=True)
