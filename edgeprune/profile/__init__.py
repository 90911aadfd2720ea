"""Profile ONNX models with onnxruntime: latency percentiles, memory, size, side by side.

Imports no torch (nor the ``onnx`` package): it runs on a board with only onnxruntime and NumPy.

>>> from edgeprune.profile import BenchConfig, profile_models, format_table
>>> BenchConfig(min_runs=10, min_time=0.5).min_runs
10
"""
from edgeprune.profile.config import BenchConfig
from edgeprune.profile.model_info import ModelInfo, external_data_files, inspect_model
from edgeprune.profile.results import ModelProfile, RunSettings, format_table, from_json, save_json, to_json
from edgeprune.profile.runner import TimingProgress, profile_models
from edgeprune.profile.compare import Comparison, compare_models
from edgeprune.profile.estimate import SpeedupEstimate

__all__ = [
    "BenchConfig", "Comparison", "ModelInfo", "ModelProfile", "RunSettings", "SpeedupEstimate", "TimingProgress",
    "compare_models", "external_data_files",
    "format_table", "from_json", "inspect_model", "profile_models", "save_json", "to_json",
]
