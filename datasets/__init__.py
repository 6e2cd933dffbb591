"""Dataset adapters. Importing this package registers every built-in task."""
from . import adult, celeba, compas, digits, fitzpatrick, german, utkface  # noqa: F401  (registration)
