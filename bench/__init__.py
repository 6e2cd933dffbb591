"""fairsqueeze: a benchmark suite for fairness-aware model compression and fair training."""

__version__ = "0.1.0"
