"""Error of Mousse's direction with bf16 whitening / unwhitening, against fp64, on real state.

Reads a run's checkpoint (momentum, eigenvalues and eigenbases of every block matrix), forms the
direction U = P_L NS(P_L^T M P_R) P_R^T (grafted to ||NS(.)||_F) with the whitening matmuls,
Newton-Schulz and the unwhitening matmuls in the given dtypes, and prints the relative Frobenius
error against the same computation in fp64 (median and max over the matrices). bf16 matmuls on
CPU accumulate in fp32, as cuBLAS does on GPUs, so the errors carry over.

    .venv/bin/mousse train --preset tiny --steps 300 --run-dir runs/w300
    .venv/bin/python benchmarks/whiten_precision.py runs/w300
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from mousse.optim import precondition as pc
from mousse.optim.orthogonalize import frobenius_norm, orthogonalize
from mousse.optim.step import graft
from mousse.train.checkpoint import find_checkpoint

ALPHA = 0.125
# (whitening, Newton-Schulz, unwhitening)
PRECISIONS = [
    ("fp32", "fp32", "fp32"),
    ("fp32", "bf16", "fp32"),
    ("fp32", "bf16", "bf16"),
    ("bf16", "bf16", "bf16"),
]
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16}


def direction(M, lam_L, Q_L, lam_R, Q_R, whiten: str, ns: str, unwhiten: str):
    def P(lam, Q, dtype):
        return pc.inverse_root_basis(lam.double(), Q.double(), ALPHA, DTYPES[dtype])

    X = pc.whiten(M.to(DTYPES[whiten]), P(lam_L, Q_L, whiten), P(lam_R, Q_R, whiten))
    Y = orthogonalize(X, "you5", 5, DTYPES[ns])
    U = pc.unwhiten(
        Y.to(DTYPES[unwhiten]), P(lam_L, Q_L, unwhiten), P(lam_R, Q_R, unwhiten)
    ).double()
    return graft(U, frobenius_norm(Y.double()), frobenius_norm(U))


def main(run_dir: str) -> None:
    state = load_file(find_checkpoint(Path(run_dir)) / "optimizer.safetensors")
    prefix = "matrix.state."
    names = sorted({k[len(prefix) :].rsplit(".", 1)[0] for k in state if k.startswith(prefix)})
    errors: dict[tuple, list[float]] = {p: [] for p in PRECISIONS}
    for name in names:
        keys = ("momentum_buffer", "lam_L", "Q_L", "lam_R", "Q_R")
        args = tuple(state[f"{prefix}{name}.{key}"].unsqueeze(0) for key in keys)
        ref = direction(*args, "fp64", "fp64", "fp64")
        for p in PRECISIONS:
            errors[p].append(float((direction(*args, *p) - ref).norm() / ref.norm()))
    print(f"{len(names)} matrices from {run_dir}; relative error of U against fp64")
    print(f"{'whitening':>9} {'NS':>5} {'unwhitening':>11} {'median':>9} {'max':>9}")
    for (whiten, ns, unwhiten), errs in errors.items():
        print(f"{whiten:>9} {ns:>5} {unwhiten:>11} {statistics.median(errs):9.2e} {max(errs):9.2e}")


if __name__ == "__main__":
    main(sys.argv[1])
