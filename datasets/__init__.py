"""Dataset adapters. Importing this package registers every built-in task."""
from . import adult, digits  # noqa: F401  (registration)
