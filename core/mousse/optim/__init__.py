"""mousse.optim: the optimizer family, importable on its own into any training loop.

One engine (`KroneckerOptimizer`, a shell around the pure step in `step`) whose knobs (`knobs`,
each declared once) span Mousse, Muon, Shampoo, SOAP, SPlus, TNT and
SpecGD (each a recipe class), the orthogonalizers and eigen preconditioner it is made of, the
Triton kernels it dispatches to on CUDA, Lion, and the routing of a model's parameters to a matrix
optimizer and a scalar one. Imports nothing else of `mousse`.
"""

from .family import KroneckerOptimizer
from .knobs import KNOB_CHOICES, KNOB_DEFAULTS, RUN_KNOBS
from .lion import Lion
from .recipes import OPTIMIZER_CLASSES, SOAP, TNT, Mousse, Muon, Shampoo, SpecGD, SPlus
from .routing import CombinedOptimizer, Route, build_optimizer, infer_roles, infer_transposed

__all__ = [
    "KNOB_CHOICES",
    "KNOB_DEFAULTS",
    "OPTIMIZER_CLASSES",
    "RUN_KNOBS",
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
    "build_optimizer",
    "infer_roles",
    "infer_transposed",
]
