"""mousse: Mousse (Muon whitened by Shampoo's Kronecker factors) and its baselines, as a library.

Layers, each importing only the ones before it: `mousse.optim` (the optimizer family) ->
`mousse.train` (one training run) -> `mousse.distributed` (one rank of a torchrun job) ->
`mousse.experiments` (ablations, results, benchmarks). docs/architecture.md maps them.
"""

from mousse.optim import (
    SOAP,
    TNT,
    CombinedOptimizer,
    KroneckerOptimizer,
    Lion,
    Mousse,
    Muon,
    Route,
    Shampoo,
    SpecGD,
    SPlus,
    build_optimizer,
)

__version__ = "0.1.0"
__all__ = [
    "SOAP",
    "TNT",
    "CombinedOptimizer",
    "KroneckerOptimizer",
    "Lion",
    "Mousse",
    "Muon",
    "Route",
    "SPlus",
    "Shampoo",
    "SpecGD",
    "__version__",
    "build_optimizer",
]
