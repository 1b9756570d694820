"""One rank's part in a torch.distributed job: joining and leaving the process group (`setup`,
`teardown`), `Dist` (the rank's view of the job, used by the trainer at fixed points of the step)
and its checkpoints (written by `sharded`). ZeRO-1 style; the optimizers themselves know nothing of it.
The ownership plan is in `ownership`, the rank's process side (environment, errors, exit) in
`process`; design notes: docs/scaling.md.

- Data: every rank reads a disjoint slice of the same global batch (`data.train_batch`'s `rows`,
  split by `process.batch_split`), so the global batch and the results do not depend on the number
  of ranks.
- Gradients: one exchange per step. Gradients of the replicated parameters (embedding, head,
  gains) are all-reduced; block-matrix gradients are reduce-scattered so that each matrix's owner
  alone receives its sum. The step's loss (reported as the global mean) and the stop flag ride
  along in a small all-reduce.
- Optimizer: `ownership.plan_ownership` gives each block matrix to one rank. Each rank's matrix
  optimizer is built over its own matrices only (`build_optimizer(owned=...)`): optimizer state
  memory falls about N-fold. After the step the owners' new values are all-gathered (fp32, or bf16
  updates with `gather_dtype = "bf16"`). Every rank joins every collective on every step,
  whichever parameters got gradients, so nothing waits on a collective that never comes.
- Checkpoints: model and trainer state once (rank 0), the optimizer state per rank
  (`optimizer-rank{r}.safetensors`) plus `optimizer-index.json`. Loading finds each parameter's
  state by name, so a run resumes on any world size (ownership is recomputed, state moves).

With one process `setup` returns the trainer's own single-process `World`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from mousse.optim.routing import CombinedOptimizer, routed_shapes
from mousse.train.checkpoint import Loaded
from mousse.train.config import TrainConfig
from mousse.train.optstate import load_optimizer_state, optimizer_state_by_name
from mousse.train.world import World

from .ownership import OwnerLayout, cost_model, plan_ownership
from .process import (
    batch_split,
    env_world_size,
    inject_failure,
    leave_process_group,
    timeout_seconds,
)
from .sharded import save_sharded

T = TypeVar("T")

# ---- the process group ---------------------------------------------------------------------------


def setup(device: torch.device | str | None = None) -> World:
    """This process's place in the job: joins torchrun's process group the first time (gloo on
    CPU, NCCL on CUDA, collectives timing out after MOUSSE_DIST_TIMEOUT seconds) and, on CUDA,
    picks the GPU LOCAL_RANK. Without torchrun (or with one rank), a world of one process."""
    device = torch.device(device or "cpu")
    world = env_world_size()
    if world <= 1:
        return World(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_seconds()),
            device_id=device if device.type == "cuda" else None,  # None: torch's default
        )
        atexit.register(teardown)
    return Dist(dist.get_rank(), dist.get_world_size(), local, device)


def teardown() -> None:
    """At exit: leave the process group the safe way (`process.leave_process_group`)."""
    with contextlib.suppress(Exception):  # a peer already gone: nothing left to wait for
        leave_process_group()


# ---- the job as seen from one rank --------------------------------------------------------------


class Dist(World):
    """One rank's view of a job of several ranks: the trainer's `World` hooks as collectives."""

    def __init__(
        self,
        rank: int = 0,
        world_size: int = 1,
        local_rank: int = 0,
        device: torch.device | None = None,
    ):
        super().__init__(device)
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.active, self.is_main = world_size > 1, rank == 0
        self.owners: dict[str, int] | None = None  # the ownership plan, once `prepare`d
        self._local_stop: threading.Event | None = None
        self._agreed_stop: threading.Event | None = None
        self._stop_seen: Tensor | None = None
        self._stop_event: torch.cuda.Event | None = None
        self._gather_bf16 = False
        self._fisher = self._average = False
        # every rank calls it: one directory, written whole or not at all, with the optimizer
        # state as one shard per rank plus an index; an error on any rank is raised on every rank
        self.save_checkpoint = functools.partial(save_sharded, self)

    # ---- set-up ---------------------------------------------------------------------------------

    def from_rank0(self, obj: T) -> T:
        """Rank 0's value of a picklable object, on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agreed_stop(self, local: threading.Event) -> threading.Event:
        """A stop flag every rank sees set on the same step: set when any rank's `local` was
        (checked in each step's gradient exchange; `local` is then set on every rank too)."""
        self._local_stop, self._agreed_stop = local, threading.Event()
        return self._agreed_stop

    def prepare(self, model: torch.nn.Module, cfg: TrainConfig) -> set[str] | None:
        """Check the batch splits over the ranks, give every rank rank 0's weights, plan which rank
        owns which block matrix, and return the names this rank's matrix optimizer gets (None:
        all of them, a single process)."""

        batch_split(cfg.batch_size, cfg.micro_batch_size, self.world_size)
        self._gather_bf16 = getattr(cfg, "gather_dtype", None) == "bf16"  # validated by config
        self._fisher = getattr(cfg, "fisher", None) == "sampled"
        self._average = bool(getattr(cfg, "average_rate", None))
        with torch.no_grad():
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        shapes = routed_shapes(model)  # as the optimizer sees them: (in, out) weights turned
        self.owners = plan_ownership(shapes, self.world_size, cost_model(cfg))
        self.layout = OwnerLayout(
            list(shapes),
            {n: p.numel() for n, p in self.params if n in shapes},
            self.owners,
            self.world_size,
        )
        self.matrices = {n: p for n, p in self.params if n in self.owners}
        self.replicated = [(n, p) for n, p in self.params if n not in self.owners]
        self.owned = [(n, self.matrices[n]) for n, _, _ in self.layout.slots(self.rank)]
        dtypes = {p.dtype for _, p in self.params}
        self.comm_dtype = torch.float64 if torch.float64 in dtypes else torch.float32
        return {n for n, _ in self.owned}

    # ---- the step -------------------------------------------------------------------------------

    def batch_rows(
        self, batch_size: int, micro_batch_size: int
    ) -> tuple[list[tuple[int, slice]], int]:
        """This rank's micro batches as (index among the global batch's micro batches, row slice
        of the global batch), and the global batch's number of micro batches (what each micro
        batch's loss is divided by)."""
        share, micro = batch_split(batch_size, micro_batch_size, self.world_size)
        start = self.rank * share
        return (
            [(i // micro, slice(i, i + micro)) for i in range(start, start + share, micro)],
            batch_size // micro,
        )

    def reduce_gradients(self, loss: Tensor, step: int) -> Tensor:
        """Sum the step's gradients over the ranks (each rank's loss was already divided by the
        global number of micro batches) and return the global mean loss. Replicated parameters
        get the full sum; block matrices only on their owner (None elsewhere). A parameter that
        no rank saw a gradient for keeps grad None, as in a single process."""
        inject_failure(self.rank, step)
        stop = self._local_stop is not None and self._local_stop.is_set()
        local_flags = [p.grad is not None for _, p in self.params]
        head, flat, mine = self._sum_over_ranks(loss, stop, local_flags)
        # which parameters had a gradient on some rank: only needed (a host read) when this
        # rank lacked one, since a local gradient already implies a global one
        has = local_flags if all(local_flags) else [v > 0 for v in head[2:].tolist()]
        self._set_gradients(dict(zip((n for n, _ in self.params), has, strict=True)), flat, mine)
        self._agree_on_stop(head[1])
        return head[0].to(loss.dtype)

    def _sum_over_ranks(
        self, loss: Tensor, stop: bool, local_flags: list[bool]
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Three collectives in flight at once: (loss, stop flag, which gradients exist) and the
        replicated gradients all-reduced, the block matrices' reduce-scattered to their owners.
        Returns the reduced head, the replicated gradients (flat) and this rank's matrices'."""
        dev, dtype = self.device, self.comm_dtype
        head = torch.tensor([0.0, float(stop), *map(float, local_flags)], dtype=dtype).to(dev)
        head[0:1].copy_(loss.detach().reshape(1))
        works = [dist.all_reduce(head, async_op=True)]
        flat = (
            torch.cat(
                [
                    p.grad.reshape(-1).to(dtype)
                    if p.grad is not None
                    else torch.zeros(p.numel(), dtype=dtype, device=dev)
                    for _, p in self.replicated
                ]
            )
            if self.replicated
            else None
        )
        if flat is not None:
            works.append(dist.all_reduce(flat, async_op=True))
        width = self.layout.width
        packed = torch.empty(self.world_size * width, dtype=dtype, device=dev)
        grads = {n: p.grad for n, p in self.matrices.items()}
        for r in range(self.world_size):
            self.layout.pack(packed[r * width : (r + 1) * width], r, grads)
        mine = torch.empty(width, dtype=dtype, device=dev)
        works.append(dist.reduce_scatter_tensor(mine, packed, async_op=True))
        for work in works:
            work.wait()
        return head, flat, mine

    def _set_gradients(self, has: dict[str, bool], flat: Tensor | None, mine: Tensor) -> None:
        """The summed gradients into .grad: replicated parameters everywhere, block matrices on
        their owner only; None where no rank had one."""
        offset = 0
        for name, p in self.replicated:
            assert flat is not None  # None only when there are no replicated parameters
            numel = p.numel()
            p.grad = flat[offset : offset + numel].view_as(p).to(p.dtype) if has[name] else None
            offset += numel
        for p in self.matrices.values():
            p.grad = None
        for name, offset, numel in self.layout.slots(self.rank):
            p = self.matrices[name]
            p.grad = mine[offset : offset + numel].view_as(p).to(p.dtype) if has[name] else None

    def _agree_on_stop(self, flag: Tensor) -> None:
        """Read the previous step's summed stop flag (long finished, so no stall) and this one's
        without a host sync; every rank reads the same values at the same step."""
        if self._stop_seen is not None:
            if self._stop_event is not None:
                self._stop_event.synchronize()
            if float(self._stop_seen) > 0 and self._agreed_stop is not None:
                assert self._local_stop is not None  # set together with _agreed_stop
                self._agreed_stop.set()
                self._local_stop.set()
        self._stop_seen = flag.to("cpu", non_blocking=True)
        self._stop_event = None
        if flag.is_cuda:
            # torch leaves torch.cuda.Event.__new__ unannotated
            self._stop_event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._stop_event.record()

    def optimizer_step(self, opt: CombinedOptimizer) -> None:
        """`opt.step()` on this rank's matrices (and the replicated parameters), then every
        owner's new matrices to every rank."""
        old = [p.detach().clone() for _, p in self.owned] if self._gather_bf16 else None
        opt.step()
        self._gather(old)

    @torch.no_grad()
    def _gather(self, old: list[Tensor] | None = None) -> None:
        """All-gather the owners' matrices: their values (fp32), or with `old` (the owned
        matrices before the step) their updates in bf16, applied to the old values on every rank
        including the owner, so all ranks keep the same weights."""
        width, dev = self.layout.width, self.device
        dtype = torch.bfloat16 if old is not None else self.comm_dtype
        mine = torch.empty(width, dtype=dtype, device=dev)
        values: dict[str, Tensor]
        if old is None:
            values = {n: p for n, p in self.owned}
        else:
            values = {n: p - o for (n, p), o in zip(self.owned, old, strict=True)}
        self.layout.pack(mine, self.rank, values)
        out = torch.empty(self.world_size * width, dtype=dtype, device=dev)
        dist.all_gather_into_tensor(out, mine)
        before = {} if old is None else dict(zip((n for n, _ in self.owned), old, strict=True))
        for r in range(self.world_size):
            slot = out[r * width : (r + 1) * width]
            for name, offset, numel in self.layout.slots(r):
                p, value = (
                    self.matrices[name],
                    slot[offset : offset + numel].view_as(self.matrices[name]),
                )
                if old is None:
                    if r != self.rank:
                        p.copy_(value)
                elif r == self.rank:
                    p.copy_(before[name] + value.to(p.dtype))
                else:
                    p.add_(value.to(p.dtype))

    # ---- optimizer hooks that need every rank -----------------------------------------------------

    def fisher_params(self, opt: CombinedOptimizer) -> list[Tensor]:
        """The parameters whose sampled-label gradients the coming step needs (TNT): on every rank
        the union of what the owners' optimizers ask for, since every rank holds part of the
        batch."""
        if not hasattr(opt, "fisher_params"):
            return []
        if not self._fisher:
            return opt.fisher_params()
        asked = {id(p) for p in opt.fisher_params()}
        names = list(self.matrices)
        flags = torch.tensor([float(id(self.matrices[n]) in asked) for n in names]).to(self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return [self.matrices[n] for n, f in zip(names, flags.tolist(), strict=True) if f > 0]

    def set_fisher_grads(self, opt: CombinedOptimizer, grads: dict[Tensor, Tensor]) -> None:
        """Sum the sampled-label gradients over the ranks and hand each owner its own."""
        if grads:
            flat = torch.cat([g.reshape(-1).to(self.comm_dtype) for g in grads.values()])
            dist.all_reduce(flat)
            out, offset = {}, 0
            for p, g in grads.items():
                out[p] = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
                offset += g.numel()
            grads = out
        opt.set_fisher_grads(grads)

    @contextlib.contextmanager
    def averaged_weights(self, opt: CombinedOptimizer) -> Iterator[None]:
        """The optimizer's `averaged_weights()` (SPlus' iterate average, swapped in for evaluation)
        on every rank: each owner swaps in its matrices' averages, which are then gathered; the
        other ranks' raw matrices are restored on exit."""
        swap = getattr(opt, "averaged_weights", None)
        with swap() if swap is not None else contextlib.nullcontext():
            if not self._average:
                yield
                return
            owners = self.owners
            assert owners is not None  # set by `prepare`, as _average is
            raw = {
                n: p.detach().clone() for n, p in self.matrices.items() if owners[n] != self.rank
            }
            self._gather()
            try:
                yield
            finally:
                with torch.no_grad():
                    for name, value in raw.items():
                        self.matrices[name].copy_(value)

    # ---- evaluation -----------------------------------------------------------------------------

    def eval_share(self, index: int) -> bool:
        """Whether validation batch `index` is this rank's to compute."""
        return index % self.world_size == self.rank

    def sum_in_order(self, losses: list[Tensor]) -> Tensor:
        """Sum per-batch losses (zeros where another rank computed the batch) over the ranks and
        then in batch order, the same additions as a single process makes."""
        if not losses:
            return torch.zeros((), device=self.device)
        values = torch.stack([v.float() for v in losses])
        dist.all_reduce(values)
        return super().sum_in_order(list(values.unbind(0)))

    # ---- checkpoints --------------------------------------------------------------------------------

    def load_optimizer(self, opt: CombinedOptimizer, ckpt: Path, loaded: Loaded) -> None:
        """Restore `opt` from a checkpoint, whichever world size wrote it: every parameter's
        state is read by name from the file that holds it (only what this rank's optimizer
        needs)."""
        load_optimizer_state(opt, optimizer_state_by_name(opt, Path(ckpt)), Path(ckpt))


__all__ = ["Dist", "setup", "teardown"]
