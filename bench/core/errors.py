"""User-facing errors: each prints as one clear line and exits non-zero."""


class FairsqueezeError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ConfigError(FairsqueezeError):
    """A suite file or an option is invalid; the message names the key and where it is."""


class DatasetMissing(FairsqueezeError):
    """A dataset's files are not under the data root; the message names the expected path."""


class UnknownName(FairsqueezeError):
    """A task, model or method name that no registry knows."""
