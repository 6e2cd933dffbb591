"""The built-in methods: importing this module registers them (the plugin loader does)."""
from . import bifp, dense, fairalm, lora_privacy, lowrank, pruning, quantization, svd  # noqa: F401  (registration)
