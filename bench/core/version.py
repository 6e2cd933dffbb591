"""The package version: part of every run key (a new version computes anew)."""

__version__ = "0.1.0"
