"""The built-in dataset adapters: importing this module registers their tasks (the plugin loader does)."""
from . import adult, celeba, compas, digits, fitzpatrick, german, utkface  # noqa: F401  (registration)
