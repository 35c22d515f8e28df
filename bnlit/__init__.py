"""bnlit: the batch normalization layer, completed, verified and explained.

>>> from bnlit import BatchNormalization
"""

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
    "__version__",
]
