"""Dataset plugins: the task contract in :mod:`.base` (re-exported here), the built-in adapters
in their modules, listed in :mod:`.builtin` and imported by the plugin loader."""
from fairsqueeze.datasets.base import Split, TaskData, build_task, register_task

__all__ = ["Split", "TaskData", "build_task", "register_task"]
