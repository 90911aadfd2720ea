"""Models by name: the CIFAR reference networks, torchvision, user files."""
from edgeprune.models import cifar as _cifar  # noqa: F401  (registers the CIFAR zoo)
from edgeprune.models.registry import BuiltModel, ModelEntry, build, get_entry, list_models, register_model

__all__ = ["BuiltModel", "ModelEntry", "build", "get_entry", "list_models", "register_model"]
