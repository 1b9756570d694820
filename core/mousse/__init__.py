"""mousse: Mousse (Muon whitened by Shampoo's Kronecker factors) and its baselines, as a library."""

from .lion import Lion
from .optim import SOAP, TNT, KroneckerOptimizer, Mousse, Muon, Shampoo, SpecGD, SPlus
from .routing import CombinedOptimizer, Route, build_optimizer

__version__ = "0.1.0"
__all__ = ["SOAP", "TNT", "CombinedOptimizer", "KroneckerOptimizer", "Lion", "Mousse", "Muon",
           "Route", "Shampoo", "SPlus", "SpecGD", "build_optimizer", "__version__"]
