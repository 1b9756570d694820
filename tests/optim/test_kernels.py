"""Triton kernels (sym_gram, sym_poly) against torch under the Triton interpreter, on CPU tensors,
and the dispatch rules (torch on CPU, MOUSSE_TRITON=0 off, Newton-Schulz on CPU unchanged).

Sizes stay small (the interpreter runs each program in numpy); small `block_m` overrides make
them span several tiles, so masks and mirrored off-diagonal tiles are exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (it is imported lazily, by use)

import pytest
import torch

from mousse.optim import kernels, orthogonalize
from mousse.optim.kernels import sym_gram, sym_poly, use_triton

# (shape, block_m): none a multiple of the block, except the one-tile (1, 64, 64) case.
SHAPES = [
    ((3, 37, 53), 16),
    ((1, 64, 64), None),
    ((2, 5, 130), None),
    ((2, 70, 40), 32),
    ((1, 33, 17), 16),
]
# bf16 in, fp32 accumulation, one rounding out: relative error <= 2^-8 per entry, plus the fp32
# accumulation error on entries near zero. fp32: accumulation order only.
TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (2**-8, 1e-5), torch.float16: (2**-11, 1e-5)}


@pytest.fixture(scope="module")
def interpreted():
    pytest.importorskip("triton")


def check(out, ref, dtype):
    rtol, atol = TOL[dtype]
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol * float(ref.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape,block", SHAPES, ids=[str(s) for s, _ in SHAPES])
def test_sym_gram_matches_torch(interpreted, shape, block, dtype):
    X = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    C = sym_gram(X, block_m=block, block_k=16 if block else None)
    check(C, X.double() @ X.double().mT, dtype)
    assert torch.equal(C, C.mT)  # exactly symmetric: mirrored tiles, symmetrized diagonal


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,block", SHAPES, ids=[str(s) for s, _ in SHAPES])
def test_sym_poly_matches_torch(interpreted, shape, block, dtype):
    X = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    X = X / torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)  # as in Newton-Schulz
    A = (X @ X.mT).to(dtype)
    A = torch.tril(A) + torch.tril(A, -1).mT  # exactly symmetric in dtype
    b, c = -4.7750, 2.0315
    P = sym_poly(A, b, c, block_m=block)
    Ad = A.double()
    check(P, b * Ad + c * (Ad @ Ad), dtype)
    assert torch.equal(P, P.mT)
    if dtype == torch.float32:  # the torch op the engine uses on CPU
        torch.testing.assert_close(P, torch.baddbmm(A, A, A, beta=b, alpha=c), rtol=1e-5, atol=1e-6)


def test_strided_input_and_xtx(interpreted):
    """Any strides: a transposed view gives X^T X without a copy (as Newton-Schulz passes X.mT)."""
    X = torch.randn(2, 40, 23, generator=torch.Generator().manual_seed(2))
    check(sym_gram(X.mT, block_m=16), X.mT.double() @ X.double(), torch.float32)


def test_degenerate_shapes(interpreted):
    assert sym_gram(torch.zeros(0, 4, 5)).shape == (0, 4, 4)
    assert torch.equal(sym_gram(torch.ones(2, 3, 0)), torch.zeros(2, 3, 3))
    assert sym_gram(torch.zeros(2, 0, 5)).shape == (2, 0, 0)
    with pytest.raises(ValueError):
        sym_gram(torch.zeros(4, 5))
    with pytest.raises(ValueError):
        sym_poly(torch.zeros(1, 4, 5), 1.0, 1.0)


def test_newton_schulz_through_kernels_matches_torch(interpreted, monkeypatch):
    """Newton-Schulz with the kernels forced in (here on CPU, interpreted) follows the torch path:
    the wiring, the transposed (strided) input and the polynomial epilogue."""
    X = torch.randn(2, 45, 20, generator=torch.Generator().manual_seed(3))
    method = orthogonalize.NS_METHODS["you5"]
    ref = orthogonalize.newton_schulz(X, method, 5, torch.float32)
    calls = []
    monkeypatch.setattr(kernels, "use_triton", lambda X, op="gram": calls.append(op) or True)
    out = orthogonalize.newton_schulz(X, method, 5, torch.float32)
    assert calls == ["gram", "poly"] * 5
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_kernels_as_torch_ops(interpreted):
    """mousse::sym_gram / mousse::sym_poly (what the dispatch calls) are the kernels, and pass
    torch's operator checks: schema, fake (shape-only) implementation, autograd registration."""
    X = torch.randn(2, 37, 21, generator=torch.Generator().manual_seed(5))
    A = sym_gram(X)
    assert torch.equal(torch.ops.mousse.sym_gram(X), A)
    assert torch.equal(torch.ops.mousse.sym_poly(A, -4.7750, 2.0315), sym_poly(A, -4.7750, 2.0315))
    torch.library.opcheck(torch.ops.mousse.sym_gram.default, (X,))
    torch.library.opcheck(torch.ops.mousse.sym_poly.default, (A, -4.7750, 2.0315))


def test_newton_schulz_through_kernels_compiles_whole(interpreted, monkeypatch):
    """With the kernels dispatched, torch.compile still captures Newton-Schulz as one graph
    (fullgraph: no break at the kernel launches) and computes what eager does."""
    X = torch.randn(2, 45, 20, generator=torch.Generator().manual_seed(3))
    method = orthogonalize.NS_METHODS["you5"]
    monkeypatch.setattr(kernels, "use_triton", lambda X, op="gram": True)
    ref = orthogonalize.newton_schulz(X, method, 5, torch.float32)
    torch._dynamo.reset()
    ns = torch.compile(orthogonalize.newton_schulz, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(ns(X, method, 5, torch.float32), ref, rtol=1e-5, atol=1e-5)


# Dispatch: no triton needed (use_triton looks at the device before it imports anything).


@pytest.mark.parametrize("mode", ["0", "1", "auto"])
def test_use_triton_false_on_cpu(monkeypatch, mode):
    monkeypatch.setenv("MOUSSE_TRITON", mode)
    for op in ("gram", "poly"):
        assert not use_triton(torch.empty(1, 4096, 4096, dtype=torch.bfloat16), op)


def test_use_triton_rules_on_a_cuda_tensor(monkeypatch):
    """The size / env rules, with a stand-in object posing as a CUDA tensor (no GPU here)."""

    class Fake:
        is_cuda, dtype = True, torch.bfloat16

        def __init__(self, *shape):
            self.shape = shape

        def dim(self):
            return len(self.shape)

        def size(self, i):
            return self.shape[i]

    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    big, small = Fake(4, kernels.GRAM_MIN_DIM, 4096), Fake(4, kernels.GRAM_MIN_DIM - 1, 4096)
    monkeypatch.delenv("MOUSSE_TRITON", raising=False)
    assert use_triton(big, "gram") and not use_triton(small, "gram")
    assert use_triton(Fake(1, kernels.POLY_MIN_DIM, kernels.POLY_MIN_DIM), "poly")
    assert not use_triton(Fake(kernels.GRAM_MIN_DIM, 4096), "gram")  # not a (B, m, k) batch
    monkeypatch.setenv("MOUSSE_TRITON", "0")
    assert not use_triton(big, "gram")
    monkeypatch.setenv("MOUSSE_TRITON", "1")
    assert use_triton(small, "gram") and use_triton(Fake(1, 8, 8), "poly")
    monkeypatch.setenv("MOUSSE_TRITON", "yes")
    with pytest.raises(ValueError, match="MOUSSE_TRITON"):
        use_triton(big, "gram")
    monkeypatch.setenv("MOUSSE_TRITON", "1")
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    assert not use_triton(big, "gram")


@pytest.mark.parametrize("mode", ["0", "1"])
def test_newton_schulz_on_cpu_is_the_torch_path(monkeypatch, mode):
    """Bit for bit the pre-kernel ops (X X^T, baddbmm), whatever MOUSSE_TRITON says."""
    monkeypatch.setenv("MOUSSE_TRITON", mode)
    X = torch.randn(3, 30, 12, generator=torch.Generator().manual_seed(4))
    method = orthogonalize.NS_METHODS["polar_express"]
    Y = orthogonalize.normalize(X.mT, method)
    for a, b, c in method.schedule(5):
        A = Y @ Y.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        Y = torch.baddbmm(Y, B, Y, beta=a)
    assert torch.equal(orthogonalize.newton_schulz(X, method, 5, torch.float32), Y.mT)


def test_import_does_not_import_triton():
    code = (
        "import sys, torch, mousse, mousse.optim.family, mousse.optim.orthogonalize as o; "
        "o.orthogonalize(torch.randn(1, 8, 4), 'muon', 5, torch.float32); "
        "print('triton' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert out.strip() == "False"


AOT = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mousse.optim import kernels
fn = kernels._kernel()
names = list(fn.arg_names)
for dtype, arch in [("bf16", 90), ("bf16", 80), ("fp32", 90)]:
    sig = {n: "i32" for n in names} | {"X": f"*{dtype}", "A": f"*{dtype}", "C": f"*{dtype}",
                                       "alpha": "fp32", "beta": "fp32"}
    const = {"HAS_A": True, "UPCAST": False, "PRECISION": "ieee" if dtype == "fp32" else "tf32",
             "BM": 128, "BK": 32 if dtype == "fp32" else 64}
    sig |= {n: "constexpr" for n in const}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(n),): v for n, v in const.items()})
    try:
        ptx = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                             options={"num_warps": 8, "num_stages": 3}).asm["ptx"]
    except Exception as e:
        if "ptxas" in str(e):
            sys.exit(f"SKIP no ptxas: {e}")
        raise
    print(dtype, arch, "mma" in ptx)
"""


@pytest.mark.slow
def test_kernel_compiles_for_nvidia_gpus(interpreted, tmp_path):
    """Ahead-of-time compile for sm_90 (H100/H200) and sm_80 (A100), no GPU needed: catches what
    the interpreter does not check (types, layouts); 16-bit dots must lower to tensor-core MMA.
    In a subprocess: the compiler and the interpreter do not mix in one process."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env |= {"TRITON_DEFAULT_FP_FUSION": "1", "TRITON_CACHE_DIR": str(tmp_path)}  # quiet, no ~ cache
    proc = subprocess.run(
        [sys.executable, "-c", AOT], capture_output=True, text=True, env=env, timeout=300
    )
    if proc.returncode and "SKIP no ptxas" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [
        "bf16",
        "90",
        "True",
        "bf16",
        "80",
        "True",
        "fp32",
        "90",
        "False",
    ]
