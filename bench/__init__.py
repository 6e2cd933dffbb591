"""fairsqueeze: a benchmark suite for fairness-aware model compression and fair training."""

from fairsqueeze.core.version import __version__  # noqa: F401


def __getattr__(name: str):
    # the reading API loads pandas and SQLAlchemy: only when it is asked for
    if name == "open_results":
        from fairsqueeze.reports.api import open_results

        return open_results
    if name == "load_plugins":  # for library use: the command line loads them itself
        from fairsqueeze.cli.plugins import load_plugins

        return load_plugins
    raise AttributeError(f"module 'fairsqueeze' has no attribute {name!r}")
