"""Dataset adapters. Importing this package registers every built-in task."""
from . import adult, compas, digits, german  # noqa: F401  (registration)
