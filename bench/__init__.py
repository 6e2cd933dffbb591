"""fairsqueeze: a benchmark suite for fairness-aware model compression and fair training."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # the reading API loads pandas and SQLAlchemy: only when it is asked for
    if name == "open_results":
        from fairsqueeze.reports.api import open_results

        return open_results
    raise AttributeError(f"module 'fairsqueeze' has no attribute {name!r}")
