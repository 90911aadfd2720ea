"""Device targets as data: one JSON file per device class, loaded into a validated Target.

Imports neither torch nor onnxruntime.

>>> from edgeprune.targets import load_target
>>> load_target("arm-cortex-a53").memory_arena
False
"""
from edgeprune.targets.loader import OPT_LEVELS, Target, list_targets, load_target, target_aliases

__all__ = ["OPT_LEVELS", "Target", "list_targets", "load_target", "target_aliases"]
