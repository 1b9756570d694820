"""The regime of an ablation's runs in its results and under its tables: tokens per non-embedding
parameter, as a multiple of 20, and epochs over the train data (mousse.train.budget.regime)."""

from __future__ import annotations

from mousse.experiments.results import summarize
from mousse.experiments.table_rows import protocol_notes, regime_note, render
from mousse.train.budget import regime


def _record(variant: str, seed: int, regime_: dict | None) -> dict:
    curve = [{"step": 10, "val_loss": 2.0 + seed / 10, "seconds": 1.0}]
    return {
        "name": f"{variant}-s{seed}",
        "variant": variant,
        "knobs": {},
        "seed": seed,
        "is_baseline": variant == "muon",
        "status": "completed",
        "final_val_loss": curve[-1]["val_loss"],
        "steps": 10,
        "curve": curve,
        "regime": regime_,
    }


def test_results_say_the_regime_and_warn_below_1x_and_beyond_4_epochs():
    low = regime(1000, 1000, 100)  # 1 token per parameter (0.05x), 10 epochs
    results = summarize([_record(v, s, low) for v in ("muon", "mousse") for s in (0, 1)])
    assert results["regimes"] == [low]
    assert regime_note(results) == (
        "regime: 1 tokens per non-embedding parameter (0.05x of 20), 10 epochs over the "
        "train data, every run"
    )
    notes = protocol_notes(results)
    assert any("0.05x the compute-optimal" in n for n in notes)
    assert any("10 epochs over the train data" in n for n in notes)
    assert "Regime: 1 tokens" in render(results, "markdown")
    fine = regime(40_000, 1000, 20_000)  # 2x, 2 epochs: nothing to warn of
    results = summarize([_record(v, s, fine) for v in ("muon", "mousse") for s in (0, 1)])
    assert not any("compute-optimal" in n or "epochs" in n for n in protocol_notes(results))


def test_results_from_before_regimes_render_as_before():
    old = summarize([_record(v, s, None) for v in ("muon", "mousse") for s in (0, 1)])
    assert old["regimes"] == []
    del old["regimes"]  # a results.json written before regimes were recorded
    assert regime_note(old) is None
    assert "egime" not in render(old, "markdown")
