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


PROGRESS_INTERVAL_ENV = "FAIRSQUEEZE_PROGRESS_INTERVAL"  # seconds between log lines (default 30)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class LogProgress:
    """Progress for a log: where output goes to a file or a pipe (no terminal for a bar), a
    line on stderr every ``interval`` seconds, from a timer, so a run longer than the
    interval still shows that the suite is alive: runs done of the total, failures, elapsed
    time and an ETA at the mean pace so far. Silent on a terminal (the bar shows it) and
    when quiet."""

    def __init__(self, total: int, name: str, stream=None, interval: float | None = None, enabled: bool | None = None,
                 noun: str = "run"):
        import sys

        self.total, self.name, self.noun = total, name, noun
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval if interval is not None else float(os.environ.get(PROGRESS_INTERVAL_ENV) or 30)
        if enabled is None:
            enabled = not is_quiet() and not (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.enabled = enabled
        self.done = self.failed = 0
        self._started = 0.0
        self._stop = None
        self._thread = None

    def line(self) -> str:
        import time

        elapsed = time.monotonic() - self._started
        if self.done:
            eta = _duration(elapsed / self.done * (self.total - self.done))
        else:
            eta = "unknown"
        return (f"{self.name}: {self.done}/{self.total} {self.noun}(s) done, {self.failed} failed,"
                f" {_duration(elapsed)} elapsed, ETA {eta}")

    def update(self, done: int = 1, failed: int = 0) -> None:
        self.done += done
        self.failed += failed

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> "LogProgress":
        import threading
        import time

        self._started = time.monotonic()
        if self.enabled:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._tick, name="log-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            if self.total:
                print(self.line(), file=self.stream, flush=True)


class BarAndLog:
    """A progress bar for a terminal and :class:`LogProgress` lines for a log, fed together;
    ``total`` may grow while it runs (a worker learns of selected runs as policies choose them)."""

    def __init__(self, bar, desc: str, unit: str):
        self.bar = bar  # a progress_bar(...)
        self.log = LogProgress(bar.total or 0, desc, noun=unit)

    @property
    def total(self) -> int:
        return self.log.total

    @total.setter
    def total(self, value: int) -> None:
        self.log.total = value
        self.bar.total = value

    def update(self, n: int = 1, failed: int = 0) -> None:
        self.bar.update(n)
        self.log.update(n, failed)

    def refresh(self) -> None:
        self.bar.refresh()

    def __enter__(self) -> "BarAndLog":
        self.bar.__enter__()
        self.log.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.log.__exit__(*exc)
        self.bar.__exit__(*exc)
