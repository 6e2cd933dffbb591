"""A test-only method for worker tests: truncated SVD that can be told to take its time.

Imported by worker subprocesses only (never registered in the test process itself). Each
``apply`` appends ``<pid>`` to the file named by ``SLEEPY_MARKER`` and then sleeps
``SLEEPY_S`` seconds, so a test can kill a worker in the middle of a run.
"""
import os
import time

from fairsqueeze.methods import register_method
from fairsqueeze.methods.svd import TruncatedSVD


@register_method("sleepy_svd")
class SleepySVD(TruncatedSVD):
    """Truncated SVD after an optional pause (tests only)."""

    def apply(self, ctx):
        marker = os.environ.get("SLEEPY_MARKER")
        if marker:
            with open(marker, "a") as handle:
                handle.write(f"{os.getpid()}\n")
        time.sleep(float(os.environ.get("SLEEPY_S", "0")))
        return super().apply(ctx)
