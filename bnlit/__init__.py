"""bnlit: the batch normalization layer, completed, verified and explained.

>>> from bnlit import BatchNormalization
"""

from ._threads import get_num_threads, set_num_threads
from .graph import BackwardSteps, ForwardSteps, staged_backward, staged_forward
from .layer import BatchNormalization, LayerStateError

__version__ = "0.1.0"

__all__ = [
    "BatchNormalization",
    "LayerStateError",
    "ForwardSteps",
    "BackwardSteps",
    "staged_forward",
    "staged_backward",
    "set_num_threads",
    "get_num_threads",
    "__version__",
]
