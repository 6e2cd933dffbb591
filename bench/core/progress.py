"""Progress bars that stay quiet when asked to (``--quiet`` or FAIRSQUEEZE_QUIET=1)."""
from __future__ import annotations

import os

from tqdm.auto import tqdm

QUIET_ENV = "FAIRSQUEEZE_QUIET"


def is_quiet() -> bool:
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def set_quiet(quiet: bool) -> None:
    os.environ[QUIET_ENV] = "1" if quiet else ""


def progress_bar(iterable=None, **kwargs):
    kwargs.setdefault("disable", True if is_quiet() else None)  # None: off when not a terminal
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
