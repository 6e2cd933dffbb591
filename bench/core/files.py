"""Files that processes of one machine share (the dense and backbone caches)."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise processes of one machine (e.g. two workers training the same dense reference)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_writable(path: str | Path, what: str, folder: bool = False) -> None:
    """Refuse, in one line and before anything is computed, an output that cannot be written:
    a file where a folder is wanted or the reverse, a path below a file, a read-only place or
    one where no file can be made (``/proc``). Creates nothing: the probe file it writes in the
    nearest existing folder is removed at once."""
    import tempfile

    from fairsqueeze.core.errors import FairsqueezeError

    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise FairsqueezeError(f"{what} {path}: is {kind}; expected {'a folder' if folder else 'a file'} to write")
    if path.is_file() and not os.access(path, os.W_OK):
        raise FairsqueezeError(f"{what} {path}: the file cannot be written (read-only)")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FairsqueezeError(f"{what} {path}: {existing} is a file, so nothing can be written below it")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".fairsqueeze-probe-"):
            pass
    except OSError as exc:
        raise FairsqueezeError(f"{what} {path}: cannot write in {existing}: {exc.strerror or exc}") from None
