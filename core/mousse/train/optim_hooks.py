"""What the trainer does for the matrix optimizer besides calling step(): the labels for
sampled-label (Fisher) gradients, and the optimizer's telemetry read in one host sync."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mousse.optim.routing import CombinedOptimizer


def optimizer_telemetry(opt: CombinedOptimizer) -> dict[str, float]:
    """The family optimizer's per-matrix read-outs summed up over its matrices (this rank's, under
    torchrun): the factors' eigenvalue range and worst condition number, the mean update RMS, and
    the eigh failures and skipped statistics updates so far. {} when there is nothing to read."""
    rows = opt.telemetry() if hasattr(opt, "telemetry") else []
    if not rows:
        return {}
    items = [(key, value) for row in rows for key, value in row.items()]
    device = next((v.device for _, v in items if isinstance(v, torch.Tensor)), "cpu")
    read = torch.stack(
        [torch.as_tensor(v, device=device).double().reshape(()) for _, v in items]
    ).tolist()  # one host sync for all of them
    values: dict[str, list[float]] = {}
    for (key, _), value in zip(items, read, strict=True):
        values.setdefault(key, []).append(value)
    pick: dict[str, tuple[Callable[[list[float]], float], str, str]] = {
        "lam_min": (min, "lam_L_min", "lam_R_min"),
        "lam_max": (max, "lam_L_max", "lam_R_max"),
        "cond_max": (max, "cond_L", "cond_R"),
        "eigh_failures": (sum, "eigh_failures_L", "eigh_failures_R"),
        "stat_skips": (sum, "stat_skips_L", "stat_skips_R"),
    }
    out = {"update_rms": sum(values["update_rms"]) / len(values["update_rms"])}
    for name, (reduce, *keys) in pick.items():
        found = [v for k in keys for v in values.get(k, [])]
        if found:
            out[name] = float(reduce(found))
    return out


def sampling_generator(seed: int, step: int, micro: int, device: torch.device) -> torch.Generator:
    """The generator of a micro-batch's sampled labels: a pure function of (seed, step, micro),
    so runs and resumes draw the same labels whatever ran before."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 1_009 + micro)


def sample_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label per position drawn from softmax(logits) (Gumbel-max), for TNT's sampled Fisher."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    return (logits.float() - torch.log(-torch.log(u.clamp(min=1e-20)))).argmax(dim=-1)
