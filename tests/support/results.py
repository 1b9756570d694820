"""Synthetic run records with known answers, for the statistics and tables tests."""


def curve(losses, every=100, seconds_per_step=0.01):
    return [
        {"step": every * (i + 1), "val_loss": loss, "seconds": every * (i + 1) * seconds_per_step}
        for i, loss in enumerate(losses)
    ]


def record(
    name,
    losses,
    *,
    variant=None,
    seed=0,
    status="completed",
    step_ms=10.0,
    baseline=False,
    knobs=None,
):
    final = losses[-1] if losses else None
    return {
        "name": name,
        "variant": variant or name,
        "knobs": knobs or {},
        "seed": seed,
        "is_baseline": baseline,
        "status": status,
        "final_val_loss": final,
        "best_val_loss": min(losses) if losses else None,
        "steps": 100 * len(losses),
        "step_ms_median": step_ms,
        "fwd_bwd_ms_median": step_ms * 0.8,
        "opt_ms_median": step_ms * 0.2,
        "refresh_ms_median": step_ms * 0.1,
        "tokens_per_s": 4096 / step_ms * 1000,
        "peak_mem_bytes": None,
        "curve": curve(losses),
        "timing_context": {"host": "h", "invocation": "one", "device": "cpu", "parallel": 1},
    }


def results_file(path):
    """A results.json at `path` (what `mousse report FILE` reads): muon, the baseline, and
    mousse, two seeds each; returns the path."""
    import json

    from mousse.experiments.results import summarize

    records = [
        record(f"{v}-s{s}", [2.0, final], variant=v, seed=s, baseline=v == "muon")
        for v, finals in (("muon", (1.50, 1.52)), ("mousse", (1.40, 1.41)))
        for s, final in enumerate(finals)
    ]
    path.write_text(json.dumps(summarize(records)))
    return path


def declared_keys(row_type):
    """The keys a TypedDict declares, its own and inherited, required or not."""
    return set(row_type.__required_keys__ | row_type.__optional_keys__)
