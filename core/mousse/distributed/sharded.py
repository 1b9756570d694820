"""Sharded checkpoints of a multi-rank job: model and trainer state once (rank 0), the optimizer
state as one file per rank plus an index naming where each parameter's state is, written into a
temporary directory and renamed only when every rank has written its part. The functions take
this rank's `rank.Dist` as `d`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import Tensor

from mousse.optim.routing import CombinedOptimizer
from mousse.train.checkpoint import (
    TrainerMeta,
    checkpoint_meta,
    commit_checkpoint,
    fsync,
    write_model_and_trainer,
)
from mousse.train.optstate import OPTIMIZER_INDEX, OptimizerIndex, flatten_optimizer, param_of

INDEX_FORMAT = "mousse-optimizer-shards-1"

T = TypeVar("T")

# One rank's part of a save, as every rank sees it: (its error, the parameters whose state its
# shard holds, its state's bytes, its weights digest).
ShardInfo = tuple[str | None, list[str], int, list[float]]


class RankView(Protocol):
    """What a sharded save reads of this rank's `rank.Dist` (which imports this module)."""

    rank: int
    world_size: int
    is_main: bool
    owners: dict[str, int] | None

    def from_rank0(self, obj: T) -> T: ...


def shard_name(rank: int) -> str:
    return f"optimizer-rank{rank}.safetensors"


@torch.no_grad()
def weights_digest(model: torch.nn.Module) -> list[float]:
    """Sum and sum of squares (float64) of every tensor of a model's state: equal on every rank
    while the replicas agree."""
    tensors = list(model.state_dict().values())
    if not tensors:
        return []
    return (
        torch.stack([torch.stack([t.double().sum(), t.double().square().sum()]) for t in tensors])
        .flatten()
        .tolist()
    )


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of tensors in an optimizer's state (a CombinedOptimizer's holds every rule's)."""
    return sum(
        v.numel() * v.element_size()
        for st in opt.state.values()
        for v in st.values()
        if isinstance(v, Tensor)
    )


def fresh_dir(root: Path, tmp: Path) -> None:
    """An empty temporary checkpoint dir under `root` (a leftover of a failed save is removed)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()


def save_sharded(
    d: RankView,
    ckpt_root: Path,
    step: int,
    model: torch.nn.Module,
    opt: CombinedOptimizer,
    trainer_tensors: dict[str, Tensor],
    trainer_meta: TrainerMeta,
    keep: int,
) -> Path:
    """A checkpoint of a multi-rank job (`d`: this rank's `Dist`): one directory written as a
    whole or not at all, with the optimizer state as one shard per rank plus an index. Every
    rank calls it; an error on any rank is raised on every rank (as an OSError)."""
    ckpt_root = Path(ckpt_root)
    final, tmp = ckpt_root / f"step-{step}", ckpt_root / f".step-{step}-shards"
    meta = checkpoint_meta(step)
    _on_main(d, lambda: fresh_dir(ckpt_root, tmp), tmp)
    infos = _write_shards(d, tmp, model, opt, meta)

    def finish() -> None:  # rank 0: model, trainer state, index; then the rename
        write_model_and_trainer(tmp, model, trainer_tensors, trainer_meta, meta)
        _write_index(d, tmp, step, infos)
        commit_checkpoint(tmp, final, keep)  # every rank's shard is in tmp (all_gather above)

    _on_main(d, finish, tmp)
    return final


def _on_main(d: RankView, action: Callable[[], None], tmp: Path) -> None:
    """Run `action` on rank 0 and raise its error on every rank."""
    error: str | None = None
    if d.is_main:
        try:
            action()
        except Exception as exc:  # reported on every rank below
            error = f"rank 0: {exc}"
    _fail_together(d, d.from_rank0(error), tmp)


def _write_shards(
    d: RankView, tmp: Path, model: torch.nn.Module, opt: CombinedOptimizer, meta: dict[str, str]
) -> list[ShardInfo]:
    """Every rank writes its optimizer shard into `tmp`; returns each rank's (error, state
    names, state bytes, weights digest). A failed rank, or weights that drifted from rank 0's,
    is raised on every rank."""
    error: str | None = None
    saved: list[str] = []
    try:
        tensors, opt_meta = _shard(d, *flatten_optimizer(opt))
        extra = json.loads(opt_meta["extra"])
        saved = sorted({param_of(k) for k in [*tensors, *extra]})
        save_file(tensors, tmp / shard_name(d.rank), metadata={**meta, **opt_meta})
        fsync(tmp / shard_name(d.rank))
    except Exception as exc:  # reported on every rank below
        error = f"rank {d.rank}: {exc}"
    infos: list[Any] = [None] * d.world_size  # Any: all_gather_object fills in every rank's
    dist.all_gather_object(infos, (error, saved, optimizer_state_bytes(opt), weights_digest(model)))
    _fail_together(d, next((e for e, _, _, _ in infos if e), None), tmp)
    differ = [r for r, info in enumerate(infos) if info[3] != infos[0][3]]
    _fail_together(
        d,
        f"ranks {differ} hold other weights than rank 0 (the replicas "
        "drifted apart; please report this)"
        if differ
        else None,
        tmp,
    )
    return infos


def _write_index(d: RankView, tmp: Path, step: int, infos: list[ShardInfo]) -> None:
    """The index of a sharded checkpoint: which shard holds each parameter's state."""
    index: OptimizerIndex = {
        "format": INDEX_FORMAT,
        "step": step,
        "world_size": d.world_size,
        "shards": [shard_name(r) for r in range(d.world_size)],
        "location": {name: r for r, (_, names, _, _) in enumerate(infos) for name in names},
        "owners": d.owners,
        "state_bytes": [b for _, _, b, _ in infos],
    }
    (tmp / OPTIMIZER_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    fsync(tmp / OPTIMIZER_INDEX)


def _fail_together(d: RankView, error: str | None, tmp: Path) -> None:
    """Raise `error` (the same on every rank) as an OSError, removing the partial dir."""
    if error is not None:
        if d.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"checkpoint not written: {error}")


def _shard(
    d: RankView, tensors: dict[str, Tensor], meta: dict[str, str]
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """This rank's part of the flat optimizer state: the matrices it owns, plus (rank 0 only)
    the replicated parameters' state, which is the same on every rank."""

    def keep(flat: str) -> bool:
        name = param_of(flat)
        assert d.owners is not None  # planned by `Dist.prepare`, before any checkpoint
        return d.owners.get(name, 0) == d.rank

    extra = json.loads(meta["extra"])
    extra = {k: v for k, v in extra.items() if keep(k)}
    return {k: v for k, v in tensors.items() if keep(k)}, {**meta, "extra": json.dumps(extra)}
