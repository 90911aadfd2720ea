"""edgeprune: structured pruning of CNNs for edge deployment.

The package root stays light (no torch import) so that ``edgeprune bench`` and the profiler run on
a board that has only onnxruntime and NumPy. The Python API lives in :mod:`edgeprune.api`.
"""
__version__ = "0.1.0"
