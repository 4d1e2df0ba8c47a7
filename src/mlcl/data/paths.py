"""Where built-in data files are searched, the official download fallback, and the "not found" error.

Search order for a dataset ``name``: ``<data_dir>/<name>/``, ``<data_dir>/`` (``data_dir`` defaults to
``$MLCL_DATA_DIR``), the Debian package directories, then the download cache
``~/.cache/mlcl/<name>/`` (only when no data directory is set; otherwise downloads go to
``<data_dir>/<name>/``). Set ``MLCL_OFFLINE=1`` to never touch the network.
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from mlcl.errors import DataError

DATA_DIR_ENV = "MLCL_DATA_DIR"
OFFLINE_ENV = "MLCL_OFFLINE"
DOWNLOAD_TIMEOUT_S = 20.0

Downloader = Callable[[str, Path], None]


def urllib_download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` atomically (a partial download never leaves a file behind)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def offline() -> bool:
    """True when ``$MLCL_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def data_root(data_dir: str | Path | None = None) -> Path | None:
    """The user's data directory: ``data_dir`` if given, else ``$MLCL_DATA_DIR``, else None."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else None


def _download_dir(dataset: str, root: Path | None) -> Path:
    return root / dataset if root is not None else Path.home() / ".cache" / "mlcl" / dataset


def search_dirs(dataset: str, debian_dirs: Sequence[Path], data_dir: str | Path | None = None) -> list[Path]:
    """The directories searched for ``dataset``, in order."""
    root = data_root(data_dir)
    dirs = [root / dataset, root] if root is not None else []
    dirs += [Path(d) for d in debian_dirs]
    if root is None:
        dirs.append(_download_dir(dataset, None))
    return dirs


def find_data_file(
    dataset: str,
    filenames: Sequence[str],
    debian_dirs: Sequence[Path],
    package: str,
    url: str | None = None,
    *,
    data_dir: str | Path | None = None,
    download: Downloader | None = urllib_download,
) -> Path:
    """The first existing file among ``filenames`` (alternative names of one file) in the search dirs.

    When none exists and ``url`` is known, the file is downloaded as ``filenames[0]`` unless
    ``download`` is None or ``$MLCL_OFFLINE`` is set. Otherwise raises :class:`DataError` naming every
    path searched, the Debian ``package`` to install and the ``$MLCL_DATA_DIR`` alternative.
    """
    dirs = search_dirs(dataset, debian_dirs, data_dir)
    candidates = [d / name for d in dirs for name in filenames]
    for path in candidates:
        if path.is_file():
            return path
    note = ""
    if url is not None and download is not None and offline():
        note = f"; download from {url} skipped (${OFFLINE_ENV} is set)"
    elif url is not None and download is not None:
        dest = _download_dir(dataset, data_root(data_dir)) / filenames[0]
        try:
            download(url, dest)
            return dest
        except (OSError, ValueError) as exc:  # URLError and socket timeouts are OSErrors
            note = f"; download from {url} failed ({exc})"
    raise DataError(
        f"{dataset}: data file {filenames[0]} not found; searched {', '.join(map(str, candidates))}{note}; "
        f"install it with `apt-get install {package}` or put the file in ${DATA_DIR_ENV}/{dataset}/ "
        f"(set {DATA_DIR_ENV}=/path/to/data)"
    )
