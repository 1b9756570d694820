"""mousse: Mousse (Muon whitened by Shampoo's Kronecker factors) and its baselines, as a library."""

from .optim import Mousse, Muon

__version__ = "0.1.0"
__all__ = ["Mousse", "Muon", "__version__"]
