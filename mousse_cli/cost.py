"""What a run or an ablation will cost here (time and memory), checked before any work starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape

from mousse.train.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    import torch

    from mousse.train.estimate import Estimate


def check_cost(
    configs: list[TrainConfig],
    max_hours: float | None,
    force: bool,
    runs: int | None = None,
    measured: tuple[float, str] | None = None,
) -> list[str]:
    """Estimate the time (probe or FLOPs, or `measured`: seconds and the line that says how)
    and memory of `configs` (one per variant); refuse with one line what exceeds --max-hours
    or, unless --force, the device's free memory. Returns the lines to show: the estimate, and a
    hint when a GPU preset meets a CPU."""
    from mousse.train.estimate import warning
    from mousse.train.machine import pick_device

    if max_hours is not None and not max_hours > 0:  # NaN too
        raise ConfigError("--max-hours must be a number > 0")
    estimates = _estimates(configs, force)
    total, line = measured or _total_time(configs, estimates, runs)
    if max_hours is not None and total > max_hours * 3600:
        raise ConfigError(
            f"estimated {line}: more than --max-hours {max_hours:g}; pick a "
            "smaller preset or fewer steps, or raise --max-hours"
        )
    hint = warning(configs[0], estimates[0], pick_device(configs[0].device))
    return [f"estimate: {escape(line)}"] + ([f"[yellow]warning: {escape(hint)}[/]"] if hint else [])


def _estimates(configs: list[TrainConfig], force: bool) -> list[Estimate]:
    """One estimate per config, in order; unless `force`, the first config that does not fit its
    device's free memory is refused."""
    from mousse.train.data import load_dataset
    from mousse.train.estimate import estimate
    from mousse.train.machine import pick_device

    estimates: list[Estimate] = []
    vocabs: dict[tuple[str, str | None], int] = {}
    for cfg in configs:
        device = pick_device(cfg.device)
        key = (cfg.data, cfg.val_data)  # every variant usually shares one dataset: load it once
        vocab = vocabs[key] = vocabs.get(key) or load_dataset(*key).vocab_size
        if not force:
            _refuse_far_too_big(cfg, vocab, device)
        est = estimate(cfg, vocab, device)
        estimates.append(est)
        if not est.fits and not force:
            _refuse_memory(cfg, vocab, est)
    return estimates


def _refuse_far_too_big(cfg: TrainConfig, vocab: int, device: torch.device) -> None:
    """ConfigError, at once, for a model whose weights and gradients alone exceed the device's
    free memory (estimating it in full would first build it, for minutes)."""
    from mousse.train.estimate import available_bytes, weights_floor_bytes

    floor, available = weights_floor_bytes(cfg, vocab), available_bytes(device)
    if available is not None and floor > available:
        raise ConfigError(
            f"this run needs more than {floor / 2**30:.1f} GiB (its weights and gradients "
            f"alone), the {device} has {available / 2**30:.1f} GiB free: a smaller model or a "
            "bigger device is needed (or --force to try anyway)"
        )


def _refuse_memory(cfg: TrainConfig, vocab: int, est: Estimate) -> None:
    """ConfigError naming the memory needed, the memory free, and a micro batch size that fits
    when a smaller one does."""
    from mousse.train.estimate import fitting_micro_batch

    assert est.available_bytes is not None  # known: an estimate that does not fit says so
    micro = fitting_micro_batch(cfg, vocab, est.available_bytes)
    hint = (
        f"--micro-batch-size {micro} fits"
        if micro and micro < cfg.micro_batch_size
        else "a smaller model or a bigger device is needed"
    )
    raise ConfigError(
        f"this run needs about {est.memory_bytes / 2**30:.1f} GiB, the "
        f"{est.device} has {est.available_bytes / 2**30:.1f} GiB free: "
        f"{hint} (or --force to try anyway)"
    )


def _total_time(
    configs: list[TrainConfig], estimates: list[Estimate], runs: int | None
) -> tuple[float, str]:
    """The seconds of all the runs and the line that says so: one run's own description, or the
    mean over the variants times `runs` (default: one run per config)."""
    from mousse.train.estimate import counted, describe, duration, source

    first = estimates[0]
    if len(configs) == 1 and runs is None:
        return first.run_seconds, describe(first)
    per_variant = [e.run_seconds for e in estimates]
    runs = runs or len(configs)
    total = sum(per_variant) / len(per_variant) * runs
    line = (
        f"about {duration(total)} for {counted(runs, 'run')} on this "
        f"{first.device.split(':')[0].upper()} ({duration(min(per_variant))} to "
        f"{duration(max(per_variant))} a run; "
        f"{source(first, short=True)})"
    )
    return total, line
