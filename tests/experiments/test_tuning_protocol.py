"""The tuning protocol's guards against fooling itself: tuning seeds apart from the comparison
seeds, each candidate's spread over its tuning seeds, and the seeds a paired test would need for
80% power, against hand computations."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace

import pytest
from support.cli import assert_one_line_error, invoke_cli
from support.results import record

from mousse.experiments.ablation import AblationPlan, plan_ablation
from mousse.experiments.inputs import SETTING_CHOICES, parse_seeds, tune_spec
from mousse.experiments.results import summarize, with_power
from mousse.experiments.stats import seeds_for_power
from mousse.experiments.sweep import Ablation
from mousse.experiments.table_rows import (
    budget_table_rows,
    power_note,
    render,
    tuning_note,
    tuning_rows,
    tuning_seed_notes,
)
from mousse.experiments.tuning import (
    TUNE_SEED_BASE,
    TuneSpec,
    budget_score,
    needed_by_budget,
    parse_tune,
    tune_by_budget,
    tune_variant,
)
from mousse.train import tomlio
from mousse.train.config import ConfigError

MUON = [3.0, 2.5, 2.1, 1.8, 1.6, 1.5]


def _tune(text: str = "lr=0.01,0.02", seeds=1) -> dict:
    return tune_spec(parse_tune(text, SETTING_CHOICES), seeds)


# ---- tuning seeds apart from comparison seeds --------------------------------------------------


def test_a_count_of_tuning_seeds_starts_apart_from_the_comparison_seeds():
    assert TUNE_SEED_BASE == 1000
    assert _tune()["seeds"] == [1000] and _tune(seeds=3)["seeds"] == [1000, 1001, 1002]
    assert parse_seeds("2", TUNE_SEED_BASE, "--tune-seeds") == [1000, 1001]
    assert parse_seeds("5,7", TUNE_SEED_BASE) == [5, 7]  # a list is taken as given
    plan = plan_ablation({"alpha": [0.0]}, base={"preset": "tiny"}, seeds=3, tune=_tune(seeds=2))
    assert plan.seeds == [0, 1, 2] and plan.tune is not None
    assert not set(plan.tune["seeds"]) & set(plan.seeds)


def test_tuning_seeds_that_are_comparison_seeds_are_refused():
    with pytest.raises(ConfigError, match=r"tuning seeds \[1\] are comparison seeds too"):
        plan_ablation({"alpha": [0.0]}, base={"preset": "tiny"}, seeds=3, tune=_tune(seeds=[1, 9]))
    refused = invoke_cli(
        "ablate", "--alpha", "0.0", "--tune", "lr", "--tune-seeds", "0,", "--dry-run"
    )
    assert_one_line_error(refused, "tuning seeds [0] are comparison seeds too")
    refused = invoke_cli("ablate", "--alpha", "0.0", "--tune", "lr", "--seeds", "1000,")
    assert_one_line_error(refused, "tuning seeds [1000] are comparison seeds too")


@pytest.mark.parametrize("budgets", [[], ["--budgets", "0.25,0.5"]])
@pytest.mark.parametrize("seeds", ["", "abc", "-1", "1.5"])
def test_bad_tune_seeds_are_one_line(tmp_path, seeds, budgets):
    """An empty --tune-seeds too: it is not the default count."""
    refused = invoke_cli(
        *("ablate", "--alpha", "0.0", "--tune", "lr", "--tune-seeds", seeds, *budgets),
        *("--dry-run", "--ablation-dir", tmp_path / "A"),
    )
    assert_one_line_error(refused, "seeds")
    assert not (tmp_path / "A").exists()


def test_dry_run_says_the_seed_rule_and_what_more_tuning_seeds_cost(tmp_path):
    dry = invoke_cli(
        "ablate",
        *("--alpha", "0.0", "--tune", "lr=0.01,0.02", "--tune-seeds", "2", "--dry-run"),
        *("--ablation-dir", tmp_path / "a"),
    )
    assert dry.exit_code == 0, dry.stderr
    assert "on tuning seeds [1000, 1001], then compared over seeds [0, 1, 2]" in dry.stderr
    assert "kept apart from the comparison seeds" in dry.stderr
    assert "mean of 2 tuning seeds" in dry.stderr and "N times the tuning runs" in dry.stderr
    # 3 variants x (2 values + 3 extensions) x 2 tuning seeds, + 3 comparison seeds each
    assert "at most 39 runs" in dry.stderr


def test_a_dir_that_tuned_on_its_comparison_seeds_says_so_when_refused(tmp_path):
    """An ablation dir from before tuning seeds were kept apart: a rerun of its command makes
    another plan, and the refusal says why; its results still say what they are."""
    new = plan_ablation({"alpha": [0.0]}, base={"preset": "tiny"}, seeds=2, tune=_tune())
    old = AblationPlan.from_dict({**new.to_dict(), "tune": {**new.tune, "seeds": [0]}})
    (tmp_path / "abl").mkdir()
    (tmp_path / "abl" / "ablation.toml").write_text(tomlio.dumps(old.to_dict()))
    with pytest.raises(ConfigError, match=r"it tunes on seeds \[0\], which it also compares on"):
        Ablation(new, tmp_path / "abl").validate()
    protocol = Ablation(old, tmp_path / "abl").results()["protocol"]
    assert protocol["tune_seeds"] == [0] and protocol["tune_seeds_apart"] is False


def test_results_tuned_on_comparison_seeds_carry_a_note():
    results = summarize([record("muon", MUON, baseline=True)])
    old = {**results, "protocol": {"tuned": ["lr"], "tune_seeds": [0], "seeds": [0, 1, 2]}}
    (note,) = tuning_seed_notes(old)
    assert note.startswith("tuned on seed 0, which the comparison also averages")
    assert "winner's curse" in render(old, "markdown")
    new = {**old, "protocol": {"tuned": ["lr"], "tune_seeds": [1000], "seeds": [0, 1, 2]}}
    assert tuning_seed_notes(new) == [] and "winner" not in render(new, "markdown")


# ---- each candidate's spread over its tuning seeds ---------------------------------------------


def test_each_candidate_records_its_mean_and_spread_over_the_tuning_seeds():
    losses = {(0.01, 1000): 1.30, (0.01, 1001): 1.34, (0.02, 1000): 1.31, (0.02, 1001): 1.31}
    spec = TuneSpec((("lr", (0.01, 0.02)),), (1000, 1001), 0)
    state = tune_variant(
        "mousse", {"lr": 0.01}, spec, lambda v, s: losses[(v["lr"], s)], SETTING_CHOICES
    )
    (phase,) = [p.to_dict() for p in state.phases]
    assert phase["losses"] == pytest.approx([1.32, 1.31])
    assert phase["spreads"] == pytest.approx([statistics.stdev([1.30, 1.34]), 0.0])
    assert phase["chosen"] == 0.02
    rows = tuning_rows({"variants": [{"variant": "mousse", "tuning": [phase]}]})
    assert rows[0]["Final val loss per value (* chosen)"] == (
        "0.01 1.3200 ± 0.0283 · 0.02* 1.3100 ± 0.0000 (grid edge)"
    )
    # one tuning seed has no spread; a diverged seed none either
    one = TuneSpec((("lr", (0.01,)),), (1000,), 0)
    assert tune_variant("m", {}, one, lambda v, s: 1.0, SETTING_CHOICES).phases[0].spreads == {
        0.01: None
    }
    two = TuneSpec((("lr", (0.01,)),), (1000, 1001), 0)
    diverged = lambda v, s: math.inf if s == 1001 else 1.0
    assert tune_variant("m", {}, two, diverged, SETTING_CHOICES).phases[0].spreads == {0.01: None}


def _phase(losses, chosen, spreads=None, diverged=()) -> dict:
    grid = [0.01, 0.02, 0.04][: len(losses)]
    return {
        "knob": "lr",
        "grid": grid,
        "losses": losses,
        "spreads": spreads or [None] * len(grid),
        "diverged": list(diverged),
        "chosen": chosen,
        "at_edge": False,
        "extensions": 0,
    }


def test_each_tuning_choice_says_by_how_much_it_won_and_whether_that_is_noise():
    # one tuning seed: se = the arm's sd over its comparison seeds, 0.01 for muon, 0.002 for
    # mousse. muon chose 0.02 (1.300) over 0.04 (1.305): by 0.005 < 0.01, close; mousse chose
    # 0.01 (1.290) over 0.02 (1.300; 0.04 diverged, not a rival): by 0.010 > 0.002, clear
    results = {
        "protocol": {"tuned": ["lr"], "tune_seeds": [1000], "seeds": [0, 1, 2]},
        "variants": [
            {
                "variant": "muon",
                "final_val_loss_std": 0.01,
                "tuning": [_phase([1.31, 1.30, 1.305], 0.02)],
            },
            {
                "variant": "mousse",
                "final_val_loss_std": 0.002,
                "tuning": [_phase([1.29, 1.30, None], 0.01, diverged=[0.04])],
            },
            {
                "variant": "alpha=0.0",
                "final_val_loss_std": 0.01,
                "tuning": [_phase([1.29, None], None)],
            },  # not yet chosen
        ],
    }
    margins = [r["Margin"] for r in tuning_rows(results)]
    assert margins == ["0.0050 (se 0.0100, close)", "0.0100 (se 0.0020)", "—"]
    note = tuning_note(results)
    assert note is not None and note.endswith(
        "close: a margin below its se, which another tuning seed could reverse (1 of 2 here; "
        "a rerun with --tune-seeds 2 averages 2 seeds per candidate, training only the new ones)"
    )
    # two tuning seeds: se = the candidates' pooled sd / sqrt(2) = sqrt((0.03^2 + 0.04^2) / 2)
    # / sqrt(2) = 0.025, whatever the comparison seeds' sd
    two = {
        "protocol": {"tuned": ["lr"], "tune_seeds": [1000, 1001], "seeds": [0, 1, 2]},
        "variants": [
            {
                "variant": "muon",
                "final_val_loss_std": 0.001,
                "tuning": [_phase([1.31, 1.30], 0.02, spreads=[0.03, 0.04])],
            },
        ],
    }
    assert [r["Margin"] for r in tuning_rows(two)] == ["0.0100 (se 0.0250, close)"]
    assert "their pooled sd / sqrt(2)" in (tuning_note(two) or "")
    # no seed sd (one comparison seed): the margin alone, and no note
    alone = {**two, "protocol": {**two["protocol"], "tune_seeds": [1000]}}
    alone["variants"] = [{**two["variants"][0], "final_val_loss_std": None}]
    assert [r["Margin"] for r in tuning_rows(alone)] == ["0.0100"]
    assert tuning_note(alone) is None


def test_per_budget_choices_read_the_seed_sd_at_their_own_budget():
    results = {
        "protocol": {"tuned": ["lr"], "tune_seeds": [1000], "seeds": [0, 1]},
        "budgets": [
            {"variant": "muon", "budget": 0.5, "final_val_loss_std": 0.001},
            {"variant": "muon", "budget": 2.0, "final_val_loss_std": 0.02},
        ],
        "variants": [
            {
                "variant": "muon",
                "final_val_loss_std": 0.5,
                "tuned_by_budget": [
                    {"budget": 0.5, "tuning": [_phase([1.31, 1.30], 0.02)]},
                    {"budget": 2.0, "tuning": [_phase([1.20, 1.21], 0.01)]},
                ],
            },
        ],
    }
    rows = tuning_rows(results)
    assert [(r["Knob"], r["Margin"]) for r in rows] == [
        ("lr at 0.5x", "0.0100 (se 0.0010)"),
        ("lr at 2x", "0.0100 (se 0.0200, close)"),
    ]


# ---- seeds for 80% power -----------------------------------------------------------------------


def test_seeds_for_power_by_hand():
    # normal approximation: z_0.975 = 1.959964, z_0.8 = 0.841621; (2.801585 * 0.02 / 0.01)^2
    # = 31.40, rounded up
    assert seeds_for_power(0.01, 0.02, t_correction=False) == 32
    # t quantiles at n - 1 df: n = 33 (df 32: 2.0369 + 0.8530)^2 * 4 = 33.41 > 33;
    # n = 34 (df 33: 2.0345 + 0.8527)^2 * 4 = 33.35 <= 34
    assert seeds_for_power(0.01, 0.02) == 34
    assert seeds_for_power(-0.01, 0.02) == 34  # the sign does not matter
    # sd / mean = 1: normal 7.85 -> 8; t: n = 9 (df 8: 2.3060 + 0.8889)^2 = 10.21 > 9,
    # n = 10 (df 9: 2.2622 + 0.8834)^2 = 9.89 <= 10
    assert seeds_for_power(0.005, 0.005) == 10
    assert seeds_for_power(0.1, 0.001) == 2 and seeds_for_power(0.01, 0.0) == 2  # at least 2
    assert seeds_for_power(0.0, 0.01) is None  # no difference: no n suffices


def _three_seeds(finals: dict[str, tuple[float, ...]]) -> list[dict]:
    return [
        record(f"{v}-s{s}", [*MUON[:-1], f], variant=v, seed=s, baseline=v == "muon")
        for v, values in finals.items()
        for s, f in enumerate(values)
    ]


def test_results_and_tables_give_the_seeds_for_power_per_variant():
    # per-seed differences -0.01, -0.02, -0.03: mean -0.02, sd 0.01, (sd / mean)^2 = 0.25; with
    # t quantiles, n = 4 (df 3: 3.182 + 0.978)^2 / 4 = 4.33 > 4, n = 5 (df 4: 2.776 + 0.941)^2
    # / 4 = 3.45 <= 5
    results = summarize(_three_seeds({"muon": (1.50, 1.60, 1.70), "mousse": (1.49, 1.58, 1.67)}))
    v = {x["variant"]: x for x in results["variants"]}
    assert v["mousse"]["paired_seeds_for_power"] == 5
    assert v["muon"]["paired_seeds_for_power"] is None
    assert power_note(results) == (
        "seeds a paired t-test at 0.05 needs for 80% power at the observed difference from "
        "the baseline and its seed spread: mousse 5 (has 3)"
    )
    assert "Seeds a paired t-test at 0.05 needs for 80% power" in render(results, "markdown")
    # results files from before the key existed get it from their runs
    older = {**results, "variants": [{**x} for x in results["variants"]]}
    for x in older["variants"]:
        del x["paired_seeds_for_power"]
    assert power_note(older) is None
    assert with_power(older)["variants"] == results["variants"]
    one = summarize(_three_seeds({"muon": (1.5,), "mousse": (1.4,)}))
    assert power_note(one) is None


# ---- lr per budget (`--budgets`), from the same tuning runs ------------------------------------

BUDGETS = (0.5, 2.0)


def _budget_summary(losses: dict[float, float | None], status: str = "completed") -> dict:
    """A run's summary with a final loss per budget (None: that budget's branch diverged); the
    run's own final loss is its largest budget's."""
    final = losses[max(losses)]
    return {
        "status": status,
        "final_val_loss": final,
        "steps": 100,
        "curve": [{"step": 100, "val_loss": final, "seconds": 1.0}],
        "budgets": [
            {
                "budget": b,
                "tokens": int(1000 * b),
                "tokens_per_param": 20 * b,
                "steps": int(50 * b),
                "status": "completed" if loss is not None else "diverged",
                "final_val_loss": loss,
                "best_val_loss": loss,
                "run_dir": ".",
            }
            for b, loss in losses.items()
        ],
    }


def test_budget_score_reads_each_budgets_own_loss():
    summary = _budget_summary({0.5: 1.4, 2.0: None})
    assert budget_score(summary, 0.5) == 1.4
    assert budget_score(summary, 2.0) == math.inf  # its branch diverged
    assert budget_score(summary, 1.0) == math.inf  # the run never reached it
    assert budget_score({**summary, "status": "running"}, 0.5) is None  # no result yet
    assert budget_score(None, 0.5) is None


def _loss(lr: float, budget: float, seed: int = 0) -> float:
    """Best lr 0.04 at budget 0.5, 0.02 at budget 2 (longer runs want a smaller lr)."""
    best = 0.04 if budget < 1 else 0.02
    return 2.0 / budget + abs(math.log2(lr / best)) + 0.001 * seed


def test_each_budget_chooses_its_own_lr_from_the_same_tuning_runs():
    spec = TuneSpec((("lr", (0.01, 0.02, 0.04)),), (1000,), 3)
    summaries = {lr: _budget_summary({b: _loss(lr, b) for b in BUDGETS}) for lr in (0.01, 0.02)}
    summary_of = lambda values, seed: summaries.get(values["lr"])
    states = tune_by_budget("muon", {"lr": 0.02}, spec, summary_of, SETTING_CHOICES, BUDGETS)
    # 0.04 is missing: both budgets need it, asked once
    assert needed_by_budget(states) == [({"lr": 0.04}, 1000)]
    summaries[0.04] = _budget_summary({b: _loss(0.04, b) for b in BUDGETS})
    states = tune_by_budget("muon", {"lr": 0.02}, spec, summary_of, SETTING_CHOICES, BUDGETS)
    # at budget 0.5 the best is the grid's top: it grows to 0.08 there only
    assert states[2.0].done and states[2.0].tuned == {"lr": 0.02}
    assert needed_by_budget(states) == [({"lr": 0.08}, 1000)]
    summaries[0.08] = _budget_summary({b: _loss(0.08, b) for b in BUDGETS})
    states = tune_by_budget("muon", {"lr": 0.02}, spec, summary_of, SETTING_CHOICES, BUDGETS)
    assert states[0.5].tuned == {"lr": 0.04} and states[2.0].tuned == {"lr": 0.02}
    assert states[0.5].phases[0].grid == [0.01, 0.02, 0.04, 0.08]


def _budget_ablation(tmp_path, budgets=BUDGETS, tune: str | None = "lr=0.01,0.02,0.04") -> Ablation:
    """A plan (tuned unless `tune` is None) whose runs each yield `budgets` (as `--budgets
    0.5,2` plans it)."""
    plan = plan_ablation(
        {"alpha": [0.0]},
        base={"preset": "tiny"},
        seeds=2,
        tune=_tune(tune) if tune is not None else None,
    )
    budgets_flag = ",".join(f"{b:g}" for b in budgets)
    return Ablation(replace(plan, base={**plan.base, "budgets": budgets_flag}), tmp_path / "a")


def _write(ab: Ablation, run, losses: dict[float, float]) -> None:
    ab.run_dir(run).mkdir(parents=True, exist_ok=True)
    (ab.run_dir(run) / "summary.json").write_text(json.dumps(_budget_summary(losses)))


def test_an_untuned_budgets_ablation_reads_its_plans_runs(tmp_path):
    ab = _budget_ablation(tmp_path, tune=None)
    for run in ab.plan.runs:
        _write(ab, run, {b: _loss(0.02, b, run.seed) for b in BUDGETS})
    results = ab.results()
    assert [r["name"] for r in results["runs"]] == [r.name for r in ab.plan.runs]
    assert [b["n"] for b in results["budgets"]] == [2] * 6


def test_a_budgets_ablation_takes_more_tuning_seeds_in_its_own_dir(tmp_path):
    """`--tune-seeds 2` after 1 with budgets: each budget's tuning is replayed over both seeds
    from the same runs, only the new seed's runs train, and the count ends exact."""
    ab = _budget_ablation(tmp_path)
    ab.prepare()

    def finish(ablation: Ablation) -> None:
        while wanted := ablation.wanted():
            for run in wanted:
                _write(ablation, run, {b: _loss(run.knobs["lr"], b, run.seed) for b in BUDGETS})

    finish(ab)
    before = {d.name for d in (ab.dir / "runs").iterdir()}
    more = Ablation(replace(ab.plan, tune={**ab.plan.tune, "seeds": [1000, 1001]}), ab.dir)
    more.validate()
    more.prepare()
    assert {r.name.replace("-s1001", "-s1000") for r in more.wanted()} == {
        n for n in before if n.endswith("-s1000")
    } - {f"{v}@lr=0.08-s1000" for v in ("muon", "mousse", "alpha=0.0")}
    finish(more)
    n = len(list((more.dir / "runs").iterdir()))
    assert more.run_count() == (n, True) and more.progress() == f"{n} of {n} runs done"
    # the seeds' ranking agrees: the choices, and so the comparison runs, stand
    assert {r["name"] for r in more.results()["runs"]} == {r["name"] for r in ab.results()["runs"]}


def test_each_budgets_results_and_speedups_read_the_runs_at_its_own_lr(tmp_path):
    """The per-budget table and the speedup from budgets read each budget from the comparison
    runs at the lr tuned for it, not from the runs at the largest budget's lr."""
    budgets = (0.25, 0.5, 1.0, 2.0)
    ab = _budget_ablation(tmp_path, budgets)
    counts = [ab.run_count()]
    while wanted := ab.wanted():
        for run in wanted:
            _write(ab, run, {b: _loss(run.knobs["lr"], b, run.seed) for b in budgets})
        counts.append(ab.run_count())
    # the count starts at the upper bound and tightens as variants decide; once every budget's
    # tuning is decided it is exact: here, all in the dir
    assert counts[0] == (ab.upper_bound_runs(), False)
    assert [n for n, _ in counts] == sorted((n for n, _ in counts), reverse=True)
    assert counts[-1] == (len(list((ab.dir / "runs").iterdir())), True)
    results = ab.results()
    expected = {
        b: statistics.fmean(_loss(0.04 if b < 1 else 0.02, b, s) for s in (0, 1)) for b in budgets
    }
    for variant in ("muon", "mousse"):
        rows = [r for r in results["budgets"] if r["variant"] == variant]
        assert [r["final_val_loss_mean"] for r in rows] == pytest.approx(list(expected.values()))
    (mousse,) = [v for v in results["variants"] if v["variant"] == "mousse"]
    assert [row["loss"] for row in mousse["budget_speedups"]] == pytest.approx(
        list(expected.values())
    )
    (muon,) = [v for v in results["variants"] if v["is_baseline"]]
    assert muon["budget_fit"]["budgets"] == list(budgets) and muon["budget_fit"]["fit"]
    (run,) = [r for r in results["runs"] if r["variant"] == "mousse" and r["seed"] == 0]
    variants = [r["Variant"] for r in budget_table_rows(results) if r["Budget"] in ("0.5x", "1x")]
    assert variants[2:4] == ["mousse @ lr=0.04", "mousse @ lr=0.02"]  # the values read at
    tuning = [(r["Knob"], r["Final val loss per value (* chosen)"]) for r in tuning_rows(results)]
    assert [k for k, _ in tuning[:4]] == ["lr at 0.25x", "lr at 0.5x", "lr at 1x", "lr at 2x"]
    assert "0.04*" in tuning[1][1] and "0.02*" in tuning[2][1]
    # each budget's choice won by 1.0 (a factor of 2 in lr) against a seed sd of 0.0007: clear
    assert "(0 of 12 here)" in render(results, "markdown")
    read_from = {b["budget"]: b.get("run") for b in run["budgets"]}
    assert read_from == {0.25: "mousse@lr=0.04-s0", 0.5: "mousse@lr=0.04-s0", 1.0: None, 2.0: None}


def test_a_budgets_ablation_compares_each_budget_at_its_own_lr(tmp_path):
    """Tuning runs yield every budget; each budget picks its lr; the comparison trains each
    variant and seed once per distinct lr, and each budget reads the runs at its own lr."""
    ab = _budget_ablation(tmp_path)
    assert ab.budgets == [0.5, 2.0]
    trained = []
    while wanted := ab.wanted():
        for run in wanted:
            trained.append(run.name)
            _write(ab, run, {b: _loss(run.knobs["lr"], b, run.seed) for b in BUDGETS})
    assert len(trained) == len(set(trained)) <= ab.upper_bound_runs()
    for budget, lr in ((0.5, 0.04), (2.0, 0.02)):
        runs = ab.budget_runs(budget)
        assert {(r.seed, r.knobs["lr"]) for r in runs} == {(s, lr) for s in (0, 1)} and all(
            "@" in r.name for r in runs
        )
    # one comparison run per variant, seed and distinct lr: 3 variants x 2 seeds x 2 lrs
    assert len(ab.final_runs()) == 12
    results = ab.results()
    (mousse,) = [v for v in results["variants"] if v["variant"] == "mousse"]
    assert mousse["tuned"] == {"lr": 0.02}  # the largest budget's, the runs' full length
    assert [(t["budget"], t["tuned"]) for t in mousse["tuned_by_budget"]] == [
        (0.5, {"lr": 0.04}),
        (2.0, {"lr": 0.02}),
    ]
    assert {r["name"] for r in results["runs"]} == {r.name for r in ab.budget_runs(2.0)}


def test_the_tuning_curves_say_they_are_the_largest_budgets(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from mousse_cli import plot

    ab = _budget_ablation(tmp_path)
    while wanted := ab.wanted():
        for run in wanted:
            _write(ab, run, {b: _loss(run.knobs["lr"], b, run.seed) for b in BUDGETS})
    drawn = []
    monkeypatch.setattr(plot, "_save", lambda fig, out, plt: drawn.append(fig))
    plot.plot_tuning(ab.results(), tmp_path / "t.png")
    assert drawn[0].axes[0].get_title() == "tuning lr at 2x, the largest budget (ringed: chosen)"


def test_budgets_that_choose_alike_share_their_comparison_runs(tmp_path):
    ab = _budget_ablation(tmp_path)
    while wanted := ab.wanted():
        for run in wanted:
            _write(ab, run, {b: _loss(run.knobs["lr"], 2.0, run.seed) + b for b in BUDGETS})
    assert ab.budget_runs(0.5) == ab.budget_runs(2.0)
    assert len(ab.final_runs()) == 6  # 3 variants x 2 seeds


def test_the_plan_says_how_a_budgets_ablation_tunes_and_compares():
    from mousse_cli.ablate_plan import budget_tuning_text

    text = budget_tuning_text([0.25, 0.5, 1.0, 2.0])
    assert "chosen per budget (0.25, 0.5, 1, 2) from the same tuning runs" in text
    assert "once per distinct choice" in text
