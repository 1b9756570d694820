"""mousse: Mousse (Muon whitened by Shampoo's Kronecker factors) and its baselines, as a library."""

from .lion import Lion
from .optim import Mousse, Muon
from .routing import CombinedOptimizer, Route, build_optimizer

__version__ = "0.1.0"
__all__ = ["CombinedOptimizer", "Lion", "Mousse", "Muon", "Route", "build_optimizer", "__version__"]
