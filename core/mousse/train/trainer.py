"""The training loop: a resolved TrainConfig in, events out, a run directory on disk.

Measurements are split as users need them: forward+backward, optimizer step and the extra cost of
a preconditioner refresh (optimizer time on refresh steps minus the median non-refresh step), with
CUDA events on GPU read only when a log line is due, so the hot path adds no host syncs.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from mousse.optim.routing import build_optimizer
from mousse.optim.step import RefreshKnobs

from . import tomlio
from .checkpoint import (
    Loaded,
    latest_valid_checkpoint,
    read_checkpoint,
    run_dir_of,
)
from .config import ConfigError, TrainConfig, matrix_kwargs, resolve
from .data import check_fits, check_tokens, load_dataset, train_batch
from .estimate import compile_pays, record_compile_seconds
from .evaluation import Forward, Validation, eval_due, validation_loss
from .events import (
    CheckpointSaved,
    EvalDone,
    Event,
    MicroBatchDone,
    Notice,
    RunFinished,
    RunInfo,
    RunStarted,
    StepLogged,
)
from .fileio import append_jsonl, write_json
from .machine import (
    QUIET,
    cpu_reading,
    default_run_dir,
    environment,
    others_busy,
    pick_device,
    reset_peak_memory,
)
from .optim_hooks import optimizer_telemetry, sample_labels, sampling_generator
from .optstate import CheckpointError
from .precision import autocast, resolve_precision, resumed_compile, resumed_precision
from .resume import (
    CheckpointMeta,
    RunMeta,
    check_same_run,
    saved_config,
    saved_state,
    trainer_meta,
)
from .rundir import (
    LockLost,
    RunLock,
    check_free,
    clear_leftovers,
    earlier_logs,
    prepare_run_dir,
)
from .schedule import cooldown_length, cosine, warmup_length, wsd
from .steptimer import StepTimer, StepTiming
from .summary import (
    CurvePoint,
    RunSummary,
    TimingContext,
    TrainerState,
    earlier_timing,
    read_summary,
    run_summary,
)
from .usermodel import build_model, model_failure
from .world import World

SLOW_STEP_S = 2.0  # a step running longer than this reports its micro batches as it goes
STOP_WAIT_S = 5.0  # a stop waits for the rest of the step when it takes no longer than this


class StepCut(Exception):
    """A stop in a long step: the step is dropped at a micro-batch boundary (its gradients and
    RNG draws undone), the model and optimizer left as the step before it made them."""

    def __init__(self, step: int, done: int, total: int, left_s: float):
        super().__init__(
            f"stopped in step {step} after {done} of {total} micro batches (the rest would "
            f"take about {left_s:.0f} s)"
        )


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The RNG state a step draws from (CPU, and the device's on CUDA)."""
    state = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Put back an `rng_state` (a CUDA state only on CUDA)."""
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng_cuda"], device)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The factor of the peak lrs at optimizer step `step` under the run's schedule
    (`mousse.train.schedule`: cosine or wsd, after the warmup)."""
    warmup = warmup_length(cfg.steps, cfg.warmup_frac, cfg.warmup_steps)
    if cfg.schedule == "wsd":
        cooldown = cooldown_length(cfg.steps, cfg.cooldown)
        return wsd(step, cfg.steps, warmup, cooldown, cfg.min_lr_frac, cfg.cooldown_shape)
    return cosine(step, cfg.steps, warmup, cfg.min_lr_frac)


class Trainer:
    """Runs one configured training run; `run()` returns the summary (also in summary.json)."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path | None = None,
        on_event: Callable[[Event], None] | None = None,
        resume: Path | None = None,
        stop: threading.Event | None = None,
        argv: list[str] | None = None,
        world: Callable[[torch.device], World] = World,
        timing_context: TimingContext | None = None,
        restart: bool = False,
        lock: RunLock | None = None,
    ):
        self.cfg = cfg
        # where its timings were taken
        self.timing_context: TimingContext = {**(timing_context or {})}
        self.restart = (
            restart  # the run dir may hold this same run's files from before a checkpoint
        )
        self.refresh_knobs = RefreshKnobs.of(cfg.to_dict())  # which steps refresh (timed apart)
        self.lock = lock  # the run dir's, when the caller took it before choosing `resume`
        self.timer: StepTimer | None = None
        self.emit = on_event or (lambda event: None)
        self._join_world(world, Path(run_dir) if run_dir else default_run_dir(cfg), stop)
        self.data = load_dataset(cfg.data, cfg.val_data, cfg.split)
        check_fits(self.data, cfg.batch_size, cfg.micro_batch_size, cfg.seq_len, cfg.seed)
        ckpt = loaded = None
        if resume is not None:
            ckpt = latest_valid_checkpoint(resume, lambda text: self.emit(Notice(text)))
            loaded = read_checkpoint(ckpt)
        self._choose_arithmetic(trainer_meta(loaded) if loaded is not None else None)
        self._build_model_and_optimizer()
        self.step = 0
        # the run's totals and outcome so far, by name (each stored as JSON in a checkpoint)
        self.state: TrainerState = {
            "train_seconds": 0.0,
            "eval_seconds": 0.0,
            "checkpoint_seconds": 0.0,
            "best_val_loss": math.inf,
            "final_val_loss": None,
            "first_loss": None,
            "target_step": None,
            "target_seconds": None,
        }
        self.curve: list[CurvePoint] = []
        # steps after which another run starts from this one's state (`branches`): its losses
        # are checked there, then the callback writes that run's first checkpoint, before this
        # run's own checkpoint of the step (so a kill never leaves this run past a lost fork)
        self.forks: dict[int, Callable[[], None]] = {}
        # what summary.json holds: the run's summary (a run with budgets adds its branches')
        self.summary_file: Callable[[RunSummary], RunSummary] = lambda summary: summary
        self.resumed_from: int | None = None
        self.continues_here = False  # resumes from a checkpoint of its own run dir
        if ckpt is not None and loaded is not None:
            self._restore(ckpt, loaded)
            self.continues_here = run_dir_of(ckpt.resolve()) == self.run_dir.resolve()
        if self.dist.is_main:  # refused now, before any work (and again under the lock in run)
            check_free(self.run_dir, self.continues_here, self.restart, probe=lock is None)
            if self.continues_here:
                earlier_logs(self.run_dir)  # damaged logs are refused before anything is written

    def _join_world(
        self, world: Callable[[torch.device], World], run_dir: Path, stop: threading.Event | None
    ) -> None:
        """The device, the process group (one process, or `mousse.distributed.setup` under torchrun),
        the stop flag every rank agrees on and rank 0's run dir."""
        self.dist = world(pick_device(self.cfg.device))
        self.device, self.stop = self.dist.device, self.dist.agreed_stop(stop or threading.Event())
        self.run_dir = self.dist.from_rank0(run_dir)  # one run dir for every rank
        if not self.dist.is_main:
            self.emit = lambda event: None  # only rank 0 renders

    def _choose_arithmetic(self, resumed: CheckpointMeta | None) -> None:
        """The run's precision and whether it compiles: what --precision and --compile resolve to
        here, or, resuming (`resumed`: the checkpoint's metadata), what the run trained with."""
        cfg = self.cfg
        if resumed is not None:
            self.precision = resumed_precision(cfg.precision, self.device, resumed.get("precision"))
            saved = resolve(saved_config(resumed)).compile
            self.compiled = resumed_compile(cfg.compile, resumed.get("compiled"), saved)
            return
        self.precision = resolve_precision(cfg.precision, self.device)
        self.compiled = cfg.compile == "on" or (
            cfg.compile == "auto"
            and compile_pays(cfg, self.data.vocab_size, self.device, self.precision)
        )

    def _build_model_and_optimizer(self) -> None:
        """The seeded model (the GPT, or --model's), compiled when asked, and its optimizers:
        block matrices to the family optimizer (this rank's, under torchrun), the rest to the
        scalar one."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.data.vocab_size, self.device)
        owned = self.dist.prepare(self.model, cfg)  # rank 0's weights; this rank's block matrices
        self.forward: Forward = torch.compile(self.model) if self.compiled else self.model
        self.opt, self.routes = build_optimizer(
            self.model,
            optimizer=cfg.optimizer,
            lr=cfg.lr,
            scalar_optimizer=cfg.scalar_optimizer,
            scalar_lr=cfg.scalar_lr,
            weight_decay=cfg.weight_decay,
            matrix_kwargs=matrix_kwargs(cfg, self.precision),
            owned=owned,
            compiled=self.compiled,
        )
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]

    # ---- checkpoints --------------------------------------------------------------------------

    def _check_owner(self) -> None:
        """Rank 0 still holds the run dir (LockLost otherwise): checked before each write, so
        that a run whose lock file was removed or taken over stops instead of writing beside
        another run."""
        if self.dist.is_main and self.lock is not None:
            self.lock.check()

    def _checkpoint(self) -> None:
        path, seconds = self.save_state(self.run_dir, self.cfg, self.curve, self.state)
        self.state["checkpoint_seconds"] += seconds
        self.emit(CheckpointSaved(self.step, path, seconds))

    def save_state(
        self, run_dir: Path, cfg: TrainConfig, curve: list[CurvePoint], state: TrainerState
    ) -> tuple[Path, float]:
        """Checkpoint the model, optimizer and RNG state at this step into `run_dir` as a run of
        `cfg` with `curve` and `state` (this run's own, or those of a branch forked here).
        Returns the checkpoint's dir and the seconds it took."""
        self._check_owner()
        t0 = time.perf_counter()
        meta: RunMeta = {
            "config": tomlio.dumps(cfg.to_dict()),
            "data_hash": self.data.content_hash,
            "curve": curve,
            "precision": self.precision,
            "compiled": self.compiled,
            **state,
        }
        path = self.dist.save_checkpoint(
            run_dir / "checkpoints",
            self.step,
            self.model,
            self.opt,
            rng_state(self.device),
            {k: json.dumps(v) for k, v in meta.items()},  # str-only
            cfg.keep_checkpoints,
        )
        return path, time.perf_counter() - t0

    def _restore(self, ckpt: Path, loaded: Loaded) -> None:
        meta = trainer_meta(loaded)
        check_same_run(ckpt, meta, self.cfg, self.data.content_hash)
        try:
            self.model.load_state_dict(loaded["model"])
        except RuntimeError:
            raise CheckpointError(f"checkpoint {ckpt} does not fit this model") from None
        self.dist.load_optimizer(self.opt, ckpt, loaded)  # any world size's checkpoint
        set_rng_state(loaded["trainer"], self.device)
        self.step = meta["step"]
        self.curve = meta["curve"]
        self.state = saved_state(meta)
        self.resumed_from = self.step

    # ---- the loop -----------------------------------------------------------------------------

    def _forward_backward(self, step: int, timer: StepTimer) -> torch.Tensor:
        cfg = self.cfg
        # this rank's micro batches of the global batch (all of them in a single process)
        micro_batches, accum = self.dist.batch_rows(cfg.batch_size, cfg.micro_batch_size)
        total = torch.zeros((), device=self.device)
        fisher = self.dist.fisher_params(self.opt)
        fisher_sum = [torch.zeros_like(p) for p in fisher]
        started, reported = time.perf_counter(), -math.inf
        rng = rng_state(self.device) if len(micro_batches) > 1 else {}
        for done, (i, rows) in enumerate(micro_batches, 1):
            x, y = train_batch(self.data.train, cfg.seed, step, cfg.batch_size, cfg.seq_len, rows)
            check_tokens(x, self.data.vocab_size, self.data.train)
            check_tokens(y, self.data.vocab_size, self.data.train)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with autocast(self.device, self.precision):
                logits, loss = self.forward(x, y)
            if fisher:
                timer.begin_extra()
                sampled = sample_labels(
                    logits.detach(), sampling_generator(cfg.seed, step, i, logits.device)
                )
                loss_s = F.cross_entropy(logits.float().flatten(0, 1), sampled.flatten())
                for acc, g in zip(
                    fisher_sum,
                    torch.autograd.grad(loss_s / accum, fisher, retain_graph=True),
                    strict=True,
                ):
                    acc += g
                timer.end_extra()
            # torch leaves Tensor.backward unannotated
            (loss / accum).backward()  # type: ignore[no-untyped-call]
            total += loss.detach() / accum
            elapsed = time.perf_counter() - started
            left = elapsed / done * (len(micro_batches) - done)
            if self.stop.is_set() and left > STOP_WAIT_S:  # a long step: stop now, not in hours
                set_rng_state(rng, self.device)
                raise StepCut(step, done, len(micro_batches), left)
            if elapsed > SLOW_STEP_S and elapsed - reported > 1.0 and done < len(micro_batches):
                reported = elapsed  # a long step: say how far it is, at most once a second
                self.emit(MicroBatchDone(step, done, len(micro_batches), elapsed))
        if fisher:
            self.dist.set_fisher_grads(self.opt, dict(zip(fisher, fisher_sum, strict=True)))
        return self.dist.reduce_gradients(total, step)  # summed over ranks; the global mean loss

    @torch.no_grad()
    def evaluate(self) -> Validation:
        """Mean validation loss and its standard error, on the optimizer's iterate average where
        it keeps one (SPlus)."""
        return validation_loss(
            self.forward, self.model, self.data, self.cfg, self.precision, self.dist, self.opt
        )

    def _eval_and_record(self) -> float:
        t0 = time.perf_counter()
        result = self.evaluate()
        val, se = result.loss, result.se
        seconds = time.perf_counter() - t0
        self.state["eval_seconds"] += seconds
        self.state["final_val_loss"] = val
        if math.isfinite(val):
            self.state["best_val_loss"] = min(self.state["best_val_loss"], val)
        self.curve.append(
            {
                "step": self.step,
                "val_loss": val,
                "val_loss_se": se,
                "seconds": self.state["train_seconds"],
            }
        )
        target = self.cfg.target_loss
        if target is not None and self.state["target_step"] is None and val <= target:
            self.state["target_step"] = self.step
            self.state["target_seconds"] = self.state["train_seconds"]
        if self.dist.is_main:
            self._check_owner()
            append_jsonl(
                self.run_dir / "metrics.jsonl",
                {
                    "step": self.step,
                    "val_loss": val,
                    "val_loss_se": se,
                    "train_seconds": self.state["train_seconds"],
                },
            )
        self.emit(
            EvalDone(
                self.step, val, self.state["best_val_loss"], self.state["train_seconds"], seconds
            )
        )
        return val

    def _prepare_run_dir(self, argv: list[str] | None) -> None:
        env = environment(self.cfg, self.device, self.precision, argv)
        prepare_run_dir(self.run_dir, self.cfg, env, self.resumed_from, self.step)

    def train_step(self, step: int, timer: StepTimer) -> tuple[torch.Tensor, float]:
        """Optimizer step `step`: its lr from the schedule, forward and backward over the batch,
        the update. Returns the loss (a tensor: no host sync) and the lr factor."""
        cfg = self.cfg
        factor = lr_factor(step, cfg)
        for group, base in zip(self.opt.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        timer.start()
        loss = self._forward_backward(step, timer)
        timer.mark()
        self.dist.optimizer_step(self.opt)  # each rank its own matrices, then all-gathered
        self.opt.zero_grad(set_to_none=True)
        refreshes = cfg.optimizer != "adamw" and cfg.sides != "none"
        timer.stop(refresh=refreshes and self.refresh_knobs.due(step))
        return loss, factor

    def run(self, argv: list[str] | None = None) -> RunSummary:
        """Train to the end (or a stop, or divergence) holding the run dir's lock; the summary."""
        lock = None  # the lock this call takes (a caller's own it keeps holding)
        if self.dist.is_main:  # rank 0 claims the run dir and writes its shared files
            check_free(self.run_dir, self.continues_here, self.restart, probe=self.lock is None)
            if self.lock is None:
                lock = self.lock = RunLock(self.run_dir).acquire()
            clear_leftovers(self.run_dir)
        try:
            return self._run(argv)
        except Exception as exc:
            if self.timer is None or isinstance(exc, (CheckpointError, OSError, LockLost)):
                raise  # refused before it began, the disk's fault (the rerun resumes it), or
                # the run dir another run's now (nothing more is written)
            error = self._record_failure(exc, self.timer)
            if error is None:
                raise
            raise error from None
        finally:
            if lock is not None:
                lock.release()

    def _record_failure(self, exc: Exception, timer: StepTimer) -> ConfigError | None:
        """A run that raised once it began (`timer`: its step timer) ends as failed: summary.json
        says why (checkpoints already written stay). Returns the one-line error when the user's
        model raised it."""
        error = model_failure(self.cfg, exc, f"training at step {self.step + 1}")
        tokens_per_step = self.cfg.batch_size * self.cfg.seq_len
        timing = timer.summary(self.cfg.precond_freq, tokens_per_step)
        n_params = sum(p.numel() for p in self.model.parameters())
        summary = run_summary(self, "failed", str(error or exc), timing, n_params)
        if self.dist.is_main:
            self._check_owner()
            write_json(self.run_dir / "summary.json", self.summary_file(summary))
        return error

    def _run(self, argv: list[str] | None) -> RunSummary:
        cfg = self.cfg
        if self.dist.is_main:
            self._prepare_run_dir(argv)
        n_params = sum(p.numel() for p in self.model.parameters())
        self._announce(n_params)
        timer = self.timer = StepTimer(self.device)  # set: the run has begun
        self.cpu_since = cpu_reading()  # how busy others keep the CPU during this session
        tokens_per_step = cfg.batch_size * cfg.seq_len
        start = self._evaluate_start()  # a non-finite loss before training: diverged at once
        status, message, last_eval = (
            ("diverged", start, 0) if start else self._train_loop(timer, tokens_per_step)
        )

        if status in ("completed", "interrupted") and self.step > 0:
            self._close_out(evaluate=status == "completed" and last_eval != self.step)
        summary = run_summary(self, status, message, self._timing(timer, tokens_per_step), n_params)
        if self.dist.is_main:
            self._check_owner()
            write_json(self.run_dir / "summary.json", self.summary_file(summary))
        self.emit(RunFinished(summary))
        return summary

    def _train_loop(
        self, timer: StepTimer, tokens_per_step: int
    ) -> tuple[str, str | None, int | None]:
        """The training loop, from the current step to the end, a stop or divergence: each step's
        losses read, its evaluation and its checkpoint when due. Returns what `_run` ends the run
        with: (status, why it diverged or None, the step last evaluated or None)."""
        cfg = self.cfg
        status = "completed"
        message: str | None = None
        pending: list[tuple[int, torch.Tensor]] = []  # losses not yet read on the host
        reset_peak_memory(self.device)
        last_eval = self.curve[-1]["step"] if self.curve else None

        while self.step < cfg.steps:
            if self.stop.is_set() and not pending:  # pending losses are checked first
                status = "interrupted"
                break
            step = self.step + 1
            try:
                loss, _ = self.train_step(step, timer)
            except StepCut as cut:
                status, message = self._cut_short(cut, pending, timer, tokens_per_step)
                break
            self.step = step
            pending.append((step, loss))
            ckpt_due = step % cfg.checkpoint_every == 0 or step == cfg.steps
            fork = self.forks.get(step)
            # losses are checked (one host sync) before anything is written from this state
            if ckpt_due or fork or self._read_losses_due(step):
                message = self._check_losses(pending, timer, tokens_per_step)
                if message:
                    status = "diverged"
                    break
            if eval_due(step, cfg):
                last_eval = step
                message = self._evaluate()
                if message:
                    status = "diverged"
                    break
            if fork:
                fork()
            if ckpt_due:
                self._checkpoint()
        return status, message, last_eval

    def _evaluate_start(self) -> str | None:
        """A fresh run evaluates the loss it starts from (`eval_due` at step 0); say why it
        diverged if that loss is not finite."""
        return self._evaluate() if self.step == 0 and eval_due(0, self.cfg) else None

    def _timing(self, timer: StepTimer, tokens_per_step: int) -> StepTiming:
        """The step timings of this session; a resume that had nothing left to train keeps those
        of the session before it (its summary.json), which timed the run's steps."""
        timing = timer.summary(self.cfg.precond_freq, tokens_per_step)
        if self.compiled and len(timer.total_ms) >= 3:  # the first step compiled: its extra time
            seconds = (timer.total_ms[0] - statistics.median(timer.total_ms[1:])) / 1000
            timing["compile_seconds"] = seconds
            busy = others_busy(self.cpu_since)
            if self.device.type != "cpu" or (busy is not None and busy < QUIET):
                record_compile_seconds(self.cfg, self.device, self.precision, seconds)
        if self.step != self.resumed_from or not self.continues_here:
            return timing
        earlier = read_summary(self.run_dir)  # None: none, or not a summary: nothing to keep
        return timing if earlier is None else earlier_timing(timing, earlier)

    def _cut_short(
        self,
        cut: StepCut,
        pending: list[tuple[int, torch.Tensor]],
        timer: StepTimer,
        tokens_per_step: int,
    ) -> tuple[str, str | None]:
        """After a step dropped by a stop: its gradients cleared, the losses before it checked,
        and the step the run resumes from said (its checkpoint is written on the way out, as for
        any stop). Returns (status, why it diverged or None)."""
        self.opt.zero_grad(set_to_none=True)
        message = self._check_losses(pending, timer, tokens_per_step) if pending else None
        if message:
            return "diverged", message
        start = f"step {self.step}" if self.step else "the start (nothing was trained)"
        self.emit(Notice(f"{cut}; the run resumes from {start}"))
        return "interrupted", None

    def _announce(self, n_params: int) -> None:
        """RunStarted: the resolved config and what the run is made of."""
        info: RunInfo = {
            "n_params": n_params,
            "device": str(self.device),
            "data": self.data.describe(),
            "vocab_size": self.data.vocab_size,
            "routing": self.routes,
            "resumed_from": self.resumed_from,
            "world_size": self.dist.world_size,
        }
        self.emit(RunStarted(self.run_dir, self.cfg.settings(), info))
        if not any(route.role == "matrix" for route in self.routes):
            self.emit(Notice(no_matrix_text(self.cfg)))

    def _read_losses_due(self, step: int) -> bool:
        """Whether this step reads the pending losses: a log line is due, a stop was asked, or
        on CPU (where reading costs nothing, so divergence is caught on its step)."""
        return step % self.cfg.log_every == 0 or self.stop.is_set() or self.device.type == "cpu"

    def _check_losses(
        self,
        pending: list[tuple[int, torch.Tensor]],
        timer: StepTimer,
        tokens_per_step: int,
    ) -> str | None:
        """Read the pending losses (one host sync), log the due ones (each with its own step's
        lr), and say why the run diverged if one is non-finite or beyond divergence_factor x the
        first loss."""
        cfg = self.cfg
        self.state["train_seconds"] += timer.flush()
        losses = torch.stack([l for _, l in pending]).tolist()
        pending_steps = [s for s, _ in pending]
        pending.clear()
        for s, value in zip(pending_steps, losses, strict=True):
            first = self.state["first_loss"]
            if first is None:
                first = self.state["first_loss"] = value
            if not math.isfinite(value) or value > cfg.divergence_factor * first:
                return f"loss {value:.4g} at step {s} (first loss {first:.4g})"
            if s % cfg.log_every == 0 or s == cfg.steps:
                self._log_step(s, value, lr_factor(s, cfg), timer, tokens_per_step)
        return None

    def _evaluate(self) -> str | None:
        """Evaluate and record; say why the run diverged if the validation loss is not finite."""
        val = self._eval_and_record()
        return None if math.isfinite(val) else f"validation loss {val} at step {self.step}"

    def _close_out(self, evaluate: bool) -> None:
        """A run that ends well (or is stopped) leaves its last step evaluated (when it
        completed) and checkpointed."""
        if evaluate:
            self._eval_and_record()
        if not self.dist.from_rank0((self.run_dir / "checkpoints" / f"step-{self.step}").exists()):
            self._checkpoint()

    def _log_step(
        self, step: int, loss: float, factor: float, timer: StepTimer, tokens_per_step: int
    ) -> None:
        step_ms = timer.last_total_ms
        event = StepLogged(
            step=step,
            steps=self.cfg.steps,
            train_loss=loss,
            lr=self.cfg.lr * factor,
            step_ms=step_ms,
            fwd_bwd_ms=timer.last_fwd_bwd_ms,
            opt_ms=timer.last_opt_ms,
            tokens_per_s=tokens_per_step / (step_ms / 1000) if step_ms else 0.0,
            train_seconds=self.state["train_seconds"],
            eta_seconds=(self.cfg.steps - step) * (step_ms / 1000),
            fisher_ms=timer.last_fisher_ms,
            telemetry=optimizer_telemetry(self.opt),
        )
        if self.dist.is_main:
            self._check_owner()
            append_jsonl(self.run_dir / "metrics.jsonl", event.record())
        self.emit(event)


def no_matrix_text(cfg: TrainConfig) -> str:
    """The warning for a model of which no parameter went to the matrix optimizer: the run,
    named after that optimizer, trains with the scalar one alone."""
    return (
        f"no parameter of the model went to the matrix optimizer ({cfg.optimizer}): every one "
        f"is 1-D, an embedding or the head, so the run trains with {cfg.scalar_optimizer} "
        "alone; give the model a param_roles() method naming its weight matrices 'matrix' "
        "(docs/models.md, Roles)"
    )
