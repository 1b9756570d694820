"""Tuning inside an ablation (`mousse.experiments.tuning` and the runner's use of it), on synthetic
losses and recorded run summaries: no training except one small end-to-end CLI run."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from dataclasses import replace

import pytest
from support.cli import FAST, assert_one_line_error, invoke_cli

from mousse.experiments.ablation import in_shard, plan_ablation
from mousse.experiments.inputs import SETTING_CHOICES, tune_spec
from mousse.experiments.results import summarize
from mousse.experiments.stats import (
    bootstrap_ci,
    expanded_level,
    mean_curve,
    quantile,
    speedup,
    steps_to_target,
    t_quantile,
    welch_t_test,
)
from mousse.experiments.sweep import Ablation
from mousse.experiments.tuning import (
    DEFAULT_GRIDS,
    TuneSpec,
    default_grid,
    extend,
    parse_tune,
    same_runs,
    tune_variant,
)
from mousse.train import tomlio
from mousse.train.config import ConfigError

INF = math.inf


def spec(*phases, seeds=(0,), cap=3) -> TuneSpec:
    return TuneSpec(tuple(phases), seeds, cap)


def lookup_from(loss_fn, log=None):
    """A lookup that has every result: loss_fn(values, seed)."""

    def lookup(values, seed):
        if log is not None:
            log.append((dict(values), seed))
        return loss_fn(values, seed)

    return lookup


# ---- parsing and grids --------------------------------------------------------------------------


def test_parse_tune_forms():
    assert parse_tune("lr", SETTING_CHOICES) == (("lr", None),)
    assert parse_tune("lr,weight_decay", SETTING_CHOICES) == (("lr", None), ("weight_decay", None))
    assert parse_tune("lr=0.01,0.02,0.04", SETTING_CHOICES) == (("lr", (0.01, 0.02, 0.04)),)
    assert parse_tune("lr,momentum,momentum_style=heavy_ball,nesterov", SETTING_CHOICES) == (
        ("lr", None),
        ("momentum", None),
        ("momentum_style", ("heavy_ball", "nesterov")),
    )
    assert parse_tune("momentum-style", SETTING_CHOICES) == (("momentum_style", None),)


@pytest.mark.parametrize(
    "text, words",
    [
        ("lrr", "did you mean 'lr'"),
        ("seed", "cannot tune 'seed'"),
        ("lr,lr", "twice"),
        ("momentum_style=sideways", "choose from"),
        ("momentum=1.5", "out of its range"),
        ("0.01", "neither a knob"),
        ("", "nothing to tune"),
    ],
)
def test_parse_tune_errors(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_tune(text, SETTING_CHOICES)


def test_default_grids():
    assert default_grid("lr", 0.03, SETTING_CHOICES) == [0.0075, 0.015, 0.03, 0.06, 0.12]
    assert default_grid("momentum", 0.95, SETTING_CHOICES) == [0.8, 0.9, 0.95, 0.98]
    assert DEFAULT_GRIDS["momentum"] == (0.8, 0.9, 0.95, 0.98)
    assert default_grid("momentum_style", "nesterov", SETTING_CHOICES) == list(
        SETTING_CHOICES["momentum_style"]
    )
    assert default_grid("precond_freq", 10, SETTING_CHOICES) == [2, 5, 10, 20, 40]
    with pytest.raises(ConfigError, match="no grid around it"):
        default_grid("weight_decay", 0.0, SETTING_CHOICES)


def test_extend_steps_and_bounds():
    assert extend([0.01, 0.02, 0.04], "lr", upward=True) == 0.08
    assert extend([0.01, 0.02, 0.04], "lr", upward=False) == 0.005
    assert extend([0.8, 0.9, 0.95, 0.98], "momentum", upward=True) is None  # past 1: out of range
    assert extend([0.8, 0.9, 0.95, 0.98], "momentum", upward=False) == pytest.approx(
        0.8 * 0.8 / 0.9
    )
    assert extend(["heavy_ball", "nesterov"], "momentum_style", upward=True) is None


# ---- the coordinate descent ---------------------------------------------------------------------


def test_best_interior_value_is_chosen_without_extension():
    losses = {0.0075: 3.0, 0.015: 2.0, 0.03: 1.0, 0.06: 2.5, 0.12: 4.0}
    state = tune_variant(
        "v",
        {"lr": 0.03},
        spec(("lr", None)),
        lookup_from(lambda v, s: losses[v["lr"]]),
        SETTING_CHOICES,
    )
    assert state.done and state.tuned == {"lr": 0.03} and state.at_edge == []
    assert state.phases[0].grid == sorted(losses) and state.phases[0].extensions == 0


def test_edge_grows_the_grid_until_interior():
    loss = lambda v, s: (math.log2(v["lr"] / 0.24)) ** 2  # best at 0.24: two steps past the top
    state = tune_variant("v", {"lr": 0.03}, spec(("lr", None)), lookup_from(loss), SETTING_CHOICES)
    assert state.tuned == {"lr": 0.24} and state.at_edge == []
    assert state.phases[0].grid[-3:] == [0.12, 0.24, 0.48] and state.phases[0].extensions == 2


def test_edge_cap_reports_the_optimum_at_the_edge():
    loss = lambda v, s: -v["lr"]  # always better higher up
    state = tune_variant(
        "v", {"lr": 0.03}, spec(("lr", None), cap=2), lookup_from(loss), SETTING_CHOICES
    )
    assert state.tuned == {"lr": 0.48} and state.at_edge == ["lr"]
    assert state.phases[0].extensions == 2


def test_downward_extension():
    loss = lambda v, s: v["lr"]
    state = tune_variant(
        "v",
        {"lr": 0.04},
        spec(("lr", (0.01, 0.02, 0.04)), cap=1),
        lookup_from(loss),
        SETTING_CHOICES,
    )
    assert state.phases[0].grid == [0.005, 0.01, 0.02, 0.04] and state.tuned == {"lr": 0.005}


def test_coordinate_descent_order_and_starting_point():
    """Phase 2 runs with phase 1's choice; phase 1 with the variant's own value of later knobs
    (they are not set in its runs)."""
    log = []

    def loss(v, s):
        return (v["lr"] - 0.02) ** 2 + (v.get("momentum", 0.95) - 0.9) ** 2

    state = tune_variant(
        "v",
        {"lr": 0.02, "momentum": 0.95},
        spec(("lr", (0.01, 0.02, 0.04)), ("momentum", None)),
        lookup_from(loss, log),
        SETTING_CHOICES,
    )
    assert state.tuned == {"lr": 0.02, "momentum": 0.9}
    phase1 = [v for v, _ in log if "momentum" not in v]
    phase2 = [v for v, _ in log if "momentum" in v]
    assert {v["lr"] for v in phase1} == {0.01, 0.02, 0.04}
    assert phase2 and all(v["lr"] == 0.02 for v in phase2)
    assert log.index(({"lr": 0.04}, 0)) < log.index(({"lr": 0.02, "momentum": 0.8}, 0))


def test_categorical_phase_tries_every_value_in_order():
    styles = {"heavy_ball": 2.0, "nesterov": 1.0, "ema": 3.0}
    loss = lambda v, s: styles[v.get("momentum_style", "heavy_ball")] + abs(v["lr"] - 0.02)
    state = tune_variant(
        "v",
        {"lr": 0.02, "momentum_style": "heavy_ball"},
        spec(("lr", (0.01, 0.02, 0.04)), ("momentum_style", None)),
        lookup_from(loss),
        SETTING_CHOICES,
    )
    assert state.tuned == {"lr": 0.02, "momentum_style": "nesterov"} and state.at_edge == []
    assert state.phases[1].grid == list(SETTING_CHOICES["momentum_style"])


def test_ties_are_broken_deterministically():
    """Equal losses: the value nearest the variant's own value, then the smaller one."""
    flat = lookup_from(lambda v, s: 1.0)
    assert tune_variant(
        "v", {"lr": 0.03}, spec(("lr", None), cap=0), flat, SETTING_CHOICES
    ).tuned == {"lr": 0.03}
    two = {0.01: 1.0, 0.02: 0.5, 0.04: 0.5, 0.08: 1.0}
    state = tune_variant(
        "v",
        {"lr": 0.03},
        spec(("lr", tuple(two))),
        lookup_from(lambda v, s: two[v["lr"]]),
        SETTING_CHOICES,
    )
    assert state.tuned == {"lr": 0.02}  # 0.02 and 0.04 equally near the middle: the smaller


def test_diverged_runs_never_win_and_seeds_are_averaged():
    table = {
        (0.01, 0): 2.0,
        (0.01, 1): 2.2,
        (0.02, 0): 1.0,
        (0.02, 1): INF,
        (0.04, 0): 3.0,
        (0.04, 1): 3.0,
    }
    state = tune_variant(
        "v",
        {"lr": 0.02},
        spec(("lr", (0.01, 0.02, 0.04)), seeds=(0, 1), cap=0),
        lookup_from(lambda v, s: table[(v["lr"], s)]),
        SETTING_CHOICES,
    )
    assert state.tuned == {"lr": 0.01}
    assert state.phases[0].losses[0.01] == pytest.approx(2.1)
    assert state.phases[0].to_dict()["losses"][1] is None  # inf is not JSON: None


def test_missing_results_pause_the_phase_and_resume_reaches_the_same_decision():
    """Replay from partial results: the same pending runs, then the same choice."""
    full = {0.0075: 3.0, 0.015: 2.0, 0.03: 1.5, 0.06: 1.0, 0.12: 1.2}
    have: dict = {}
    lookup = lambda v, s: have.get(v["lr"])
    state = tune_variant("v", {"lr": 0.03}, spec(("lr", None)), lookup, SETTING_CHOICES)
    assert not state.done and [v["lr"] for v, _ in state.needed] == sorted(full)
    have.update({0.0075: 3.0, 0.015: 2.0})  # interrupted after two runs
    state = tune_variant("v", {"lr": 0.03}, spec(("lr", None)), lookup, SETTING_CHOICES)
    assert [v["lr"] for v, _ in state.needed] == [0.03, 0.06, 0.12]
    have.update(full)
    state = tune_variant("v", {"lr": 0.03}, spec(("lr", None)), lookup, SETTING_CHOICES)
    assert state.done and state.tuned == {"lr": 0.06}


# ---- the runner over recorded summaries ----------------------------------------------------------


def _write_summary(
    ablation: Ablation, run, loss: float | None, status: str = "completed", steps: int = 10
) -> None:
    d = ablation.run_dir(run)
    d.mkdir(parents=True, exist_ok=True)
    curve = [
        {"step": 5, "val_loss": (loss or 0) + 0.5, "seconds": 1.0},
        {"step": steps, "val_loss": loss, "seconds": 2.0},
    ]
    (d / "summary.json").write_text(
        json.dumps(
            {
                "status": status,
                "final_val_loss": loss,
                "best_val_loss": loss,
                "steps": steps,
                "curve": curve,
                "train_seconds": 2.0,
                "step_ms_median": 10.0,
                "fwd_bwd_ms_median": 5.0,
                "opt_ms_median": 5.0,
                "refresh_ms_median": None,
                "tokens_per_s": 100.0,
                "peak_mem_bytes": None,
            }
        )
    )


def _tuned_ablation(tmp_path, tune="lr=0.01,0.02,0.04", seeds=(0, 1), tune_seeds=1) -> Ablation:
    plan = plan_ablation(
        {"alpha": [0.0]},
        base={"preset": "tiny"},
        seeds=seeds,
        tune=tune_spec(parse_tune(tune, SETTING_CHOICES), tune_seeds),
    )
    return Ablation(plan, tmp_path / "abl")


def _finish_wanted(ablation: Ablation, loss_fn) -> int:
    """Write summaries for everything wanted now; the number written."""
    wanted = ablation.wanted()
    for run in wanted:
        _write_summary(ablation, run, loss_fn(run))
    return len(wanted)


def test_runner_tunes_on_its_own_seeds_then_compares_on_others(tmp_path):
    """Tuning runs use seed 1000 only; the comparison runs seeds 0 and 1 at the tuned values,
    none of them a run a choice was made on (no winner's curse)."""
    ab = _tuned_ablation(tmp_path)
    best = {"muon": 0.04, "mousse": 0.01, "alpha=0.0": 0.02}
    loss = lambda run: 1.0 + abs(math.log2(run.knobs["lr"] / best[run.variant])) + 0.01 * run.seed
    first = ab.wanted()
    assert len(first) == 9 and all(r.seed == 1000 for r in first)
    assert {r.name for r in first} >= {"muon@lr=0.01-s1000", "mousse@lr=0.04-s1000"}
    tuning_runs: set[str] = set()
    progress = [ab.progress()]
    while wanted := ab.wanted():
        tuning_runs |= {r.name for r in wanted if r.seed == 1000}
        _finish_wanted(ab, loss)
        progress.append(ab.progress())
    # the upper bound while tuning decides what to run, tighter as each variant decides (here
    # alpha=0.0 after the first 9: its 3 tuning and 2 comparison runs in place of its bound of
    # 8), then what it decided: 11 tuning runs and 6 comparison runs (alpha=0.0's 2 began beside
    # the extensions of the other two)
    assert progress[:2] == ["0 of at most 24 runs done", "9 of at most 21 runs done"]
    assert progress[2:] == ["13 of 17 runs done", "17 of 17 runs done"]
    assert ab.run_count() == (17, True)
    finals = ab.final_runs()
    assert {r.name for r in finals} == {f"{v}@lr={best[v]}-s{s}" for v in best for s in (0, 1)}
    assert not tuning_runs & {r.name for r in finals}
    # 3 variants x 3 values, one extension each for mousse (0.005) and muon (0.08)
    assert len(tuning_runs) == 11 and ab.upper_bound_runs() == 3 * (3 + 3) + 3 * 2
    results = ab.results()
    by_name = {v["variant"]: v for v in results["variants"]}
    assert by_name["mousse"]["tuned"] == {"lr": 0.01} and by_name["muon"]["tuned"] == {"lr": 0.04}
    # 0.01 was the grid's bottom: the grid grew to 0.005, worse, so 0.01 is interior now
    assert by_name["mousse"]["tuned_at_edge"] == []
    assert by_name["mousse"]["tuning"][0]["grid"] == [0.005, 0.01, 0.02, 0.04]
    assert by_name["mousse"]["n_seeds"] == 2
    assert results["protocol"] == {
        "tuned": ["lr"],
        "tune_seeds": [1000],
        "seeds": [0, 1],
        "tune_seeds_apart": True,
    }


def test_a_finished_tuned_ablation_takes_more_seeds_in_its_own_dir(tmp_path):
    """`--seeds 3` after `--seeds 2`: the tuning stands, only the new seed's runs are wanted, and
    the results count 3 seeds; a plan that drops or reorders seeds is still another plan."""
    ab = _tuned_ablation(tmp_path)
    ab.prepare()
    best = {"muon": 0.04, "mousse": 0.01, "alpha=0.0": 0.02}
    loss = lambda run: 1.0 + abs(math.log2(run.knobs["lr"] / best[run.variant])) + 0.01 * run.seed
    while _finish_wanted(ab, loss):
        pass
    more = _tuned_ablation(tmp_path, seeds=(0, 1, 2))
    more.validate()
    more.prepare()
    assert {r.name for r in more.wanted()} == {f"{v}@lr={best[v]}-s2" for v in best}
    while _finish_wanted(more, loss):
        pass
    assert all(v["n_seeds"] == 3 for v in more.results()["variants"])
    assert tomlio.load(ab.dir / "ablation.toml")["seeds"] == [0, 1, 2]
    for seeds in ((1, 2), (1, 0, 2)):
        with pytest.raises(ConfigError, match=r"holds a different ablation plan.*may add seeds"):
            _tuned_ablation(tmp_path, seeds=seeds).validate()


def test_more_tuning_seeds_in_its_own_dir_replay_the_tuning_over_them_all(tmp_path):
    """`--tune-seeds 2` after 1: seed 1000's runs stand, every candidate trains on seed 1001 and
    the choice is the mean over both. Where it overturns a choice the comparison trains at the
    new one; the runs at the old one stay in the dir, neither read nor counted. A plan without
    the first tuning seed is still another plan."""
    best = {"muon": 0.04, "mousse": 0.01, "alpha=0.0": 0.02}

    def loss(run):  # seed 1001 prefers mousse at 0.02, and more strongly than 1000 prefers 0.01
        if run.variant == "mousse" and run.seed == 1001:
            return 1.0 + 2 * abs(math.log2(run.knobs["lr"] / 0.02))
        return 1.0 + abs(math.log2(run.knobs["lr"] / best[run.variant])) + 0.01 * run.seed

    ab = _tuned_ablation(tmp_path)
    ab.prepare()
    while _finish_wanted(ab, loss):
        pass
    assert {v["variant"]: v["tuned"] for v in ab.results()["variants"]}["mousse"] == {"lr": 0.01}
    tuned_once = {d.name for d in (ab.dir / "runs").iterdir()}
    args = ("ablate", "--preset", "tiny", "--alpha", "0.0", "--tune", "lr=0.01,0.02,0.04")
    args += ("--seeds", "2", "--ablation-dir", ab.dir, "--max-runs", "100", "--dry-run")
    planned = invoke_cli(*args, "--tune-seeds", "2")
    assert planned.exit_code == 0, planned.stderr
    assert "on tuning seeds [1000, 1001]" in planned.stderr
    more = _tuned_ablation(tmp_path, tune_seeds=2)
    more.validate()
    more.prepare()
    # each starting grid on the second seed; extensions wait for the grid's means
    assert {r.name for r in more.wanted()} == {
        f"{v}@lr={lr}-s1001" for v in best for lr in (0.01, 0.02, 0.04)
    }
    while _finish_wanted(more, loss):
        pass
    results = more.results()
    tuned = {v["variant"]: v["tuned"] for v in results["variants"]}
    assert tuned == {"muon": {"lr": 0.04}, "mousse": {"lr": 0.02}, "alpha=0.0": {"lr": 0.02}}
    assert results["protocol"]["tune_seeds"] == [1000, 1001]
    assert {r["name"] for r in results["runs"] if r["variant"] == "mousse"} == {
        "mousse@lr=0.02-s0",
        "mousse@lr=0.02-s1",
    }
    # the runs of mousse's old choice stay, unread and uncounted: its comparison, and the
    # extension that 0.01 at the grid's edge called for (the means chose inside the grid)
    kept = {"mousse@lr=0.01-s0", "mousse@lr=0.01-s1", "mousse@lr=0.005-s1000"}
    runs = {d.name for d in (more.dir / "runs").iterdir()}
    assert kept <= runs and kept <= tuned_once and "muon@lr=0.08-s1001" in runs
    n = len(runs) - len(kept)
    assert more.progress() == f"{n} of {n} runs done"
    with pytest.raises(ConfigError, match=r"holds a different ablation plan"):
        Ablation(replace(more.plan, tune={**more.plan.tune, "seeds": [1001]}), more.dir).validate()


def test_runner_resumes_in_the_middle_of_tuning(tmp_path):
    ab = _tuned_ablation(tmp_path)
    loss = lambda run: run.knobs["lr"]
    wanted = ab.wanted()
    for run in wanted[:4]:  # Ctrl-C after four runs
        _write_summary(ab, run, loss(run))
    again = [r.name for r in Ablation(ab.plan, ab.dir).wanted()]  # a new process, same dir
    assert not {r.name for r in wanted[:4]} & set(again)
    assert {r.name for r in wanted[4:]} <= set(again)


def test_failed_and_diverged_runs_score_as_worst_and_are_not_retried(tmp_path):
    ab = _tuned_ablation(tmp_path)
    for run in ab.wanted():
        status = {0.01: "diverged", 0.02: "failed"}.get(run.knobs["lr"], "completed")
        _write_summary(ab, run, None if status != "completed" else 2.0, status)
    states = ab.tuning()
    assert all(
        s.phases[0].losses[0.01] == INF and s.phases[0].losses[0.02] == INF for s in states.values()
    )
    assert all(r.knobs["lr"] != 0.01 for r in ab.wanted())


def test_shards_split_tuning_runs_stably_and_cover_them_all(tmp_path):
    ab = _tuned_ablation(tmp_path)
    names = [r.name for r in ab.wanted()]
    parts = [[n for n in names if in_shard(n, (i, 3))] for i in (1, 2, 3)]
    assert sorted(itertools.chain(*parts)) == sorted(names)
    assert all(in_shard(n, (1, 3)) == in_shard(n, (1, 3)) for n in names)


def test_a_shard_without_runs_of_its_own_reports_what_it_waits_for(tmp_path):
    ab = _tuned_ablation(tmp_path, tune="lr=0.01,0.02")
    names = {r.name for r in ab.wanted()}
    # a shard count so large that shard 1 owns none of the first phase's runs
    n = next(n for n in range(2, 200) if not any(in_shard(x, (1, n)) for x in names))
    updates = []
    ab.prepare()
    results, waiting = ab.run_tuned(updates.append, shard=(1, n))
    assert {r.name for r in waiting} == names and results["variants"]


# ---- statistics against hand-computed values ----------------------------------------------------

CURVE = [
    {"step": 100, "val_loss": 3.0, "seconds": 10.0},
    {"step": 200, "val_loss": 2.0, "seconds": 20.0},
    {"step": 300, "val_loss": 1.5, "seconds": 40.0},
]


def test_steps_to_target_interpolates_between_evaluations():
    assert steps_to_target(CURVE, 1.75) == (250.0, 30.0)  # halfway from (200, 2.0) to (300, 1.5)
    assert steps_to_target(CURVE, 2.75) == (125.0, 12.5)
    assert steps_to_target(CURVE, 3.5) == (100, 10.0)  # the first evaluation is already there
    assert steps_to_target(CURVE, 1.0) == (None, None)


def _final(loss: float, step: int = 300, seconds: float = 60.0) -> list:
    """A curve of one evaluation: `loss` at `step`."""
    return [{"step": step, "val_loss": loss, "seconds": seconds}]


def test_mean_curve_averages_the_evaluations_all_seeds_share():
    other = [
        {"step": 100, "val_loss": 2.0, "seconds": 20.0},
        {"step": 250, "val_loss": 1.9, "seconds": 30.0},
        {"step": 300, "val_loss": 1.0},
    ]
    assert mean_curve([CURVE, other]) == [
        {"step": 100, "val_loss": 2.5, "seconds": 15.0},
        {"step": 300, "val_loss": 1.25, "seconds": None},
    ]
    assert mean_curve([]) == []


def test_speedup_point_value():
    base = [_final(1.70), _final(1.80)]
    # target = the baseline's mean final loss 1.75: the variant reaches it at step 250 (30 s)
    assert speedup(base, [CURVE]) == pytest.approx(300 / 250)
    assert speedup(base, [CURVE], key="seconds") == pytest.approx(60 / 30)
    # never there: the baseline's steps (seconds) to the variant's final 2.0 over its budget
    behind = [{"step": 100, "val_loss": 3.2, "seconds": 10.0}, *_final(2.0, seconds=40.0)]
    assert speedup([CURVE], [behind]) == pytest.approx(200 / 300)
    assert speedup([CURVE], [behind], key="seconds") == pytest.approx(20 / 40)
    # a copy of the baseline is 1, not "never reached"
    assert speedup(base, base) == 1.0 and speedup(base, base, key="seconds") == 1.0
    assert speedup([], [CURVE]) is None and speedup(base, []) is None


def test_speedup_averages_curves_before_it_looks_for_the_target():
    """Per seed, the first variant curve misses the target 1.75 and the second beats it; their
    mean curve (2.5 at 100, 1.75 at 300) reaches it at step 300: speedup 1, not 0."""
    miss = [{"step": 100, "val_loss": 2.5}, {"step": 300, "val_loss": 1.80}]
    beat = [{"step": 100, "val_loss": 2.5}, {"step": 300, "val_loss": 1.70}]
    assert speedup([_final(1.75)], [miss, beat]) == 1.0


def test_quantile_matches_linear_interpolation():
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.025) == pytest.approx(1.075)
    assert quantile([5.0], 0.9) == 5.0


def test_bootstrap_interval_is_the_exact_resampling_extremes():
    """Two runs a side: 4 x 4 equally likely resamples (1/16 each > 2.5%), so the 95% interval's
    ends are the smallest and largest speedups of the full enumeration."""
    base = [_final(1.70), _final(1.80)]
    curves = [
        CURVE,
        [
            {"step": 100, "val_loss": 2.5, "seconds": 5.0},
            {"step": 300, "val_loss": 1.5, "seconds": 15.0},
        ],
    ]
    values = [
        speedup(list(b), list(c))
        for b in itertools.product(base, repeat=2)
        for c in itertools.product(curves, repeat=2)
    ]
    low, high = bootstrap_ci(base, curves)
    assert low == pytest.approx(min(values)) and high == pytest.approx(max(values))
    assert bootstrap_ci(base, curves) == [low, high]  # fixed seed: the same interval
    assert bootstrap_ci(base[:1], curves) is None


def test_t_quantiles_and_the_expanded_bootstrap_level():
    # Student's t table: 97.5% quantiles for 1, 2, 4 and 30 degrees of freedom
    for df, t in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    # 3 seeds: the t interval reaches 4.303 * sqrt(3/2) = 5.27 bootstrap standard errors, so the
    # percentiles to read are the resamples' extremes; many seeds: back to about 95%
    assert expanded_level(0.95, 3) > 1 - 1e-6
    assert 0.95 < expanded_level(0.95, 200) < 0.952


def test_the_interval_of_three_seeds_is_wider_than_a_plain_percentile_bootstrap():
    """Three seeds a side that differ by more than their spread: the plain 95% percentile
    interval excludes 1, but the t-test does not reject, and neither does the expanded interval."""
    base = [[{"step": 100, "val_loss": 3.0}, *_final(f)] for f in (1.50, 1.55, 1.60)]
    variant = [[{"step": 100, "val_loss": 3.0}, *_final(f)] for f in (1.59, 1.64, 1.69)]
    assert welch_t_test([1.59, 1.64, 1.69], [1.50, 1.55, 1.60])["p"] > 0.05
    rng = random.Random(0)
    plain = sorted(
        speedup([rng.choice(base) for _ in base], [rng.choice(variant) for _ in variant])
        for _ in range(2000)
    )
    assert quantile(plain, 0.975) < 1.0
    low, high = bootstrap_ci(base, variant)
    assert low < quantile(plain, 0.025) and high >= 1.0


def test_a_copy_of_the_baseline_has_speedup_one_inside_its_interval():
    seeds = [[{"step": 100, "val_loss": 3.0}, *_final(f)] for f in (1.49, 1.51, 1.50)]
    assert speedup(seeds, seeds) == 1.0
    low, high = bootstrap_ci(seeds, seeds)
    assert low < 1.0 < high


def test_summary_fields_for_the_comparison():
    def rec(variant, seed, loss, curve, base=False):
        return {
            "name": f"{variant}-s{seed}",
            "variant": variant,
            "knobs": {},
            "seed": seed,
            "is_baseline": base,
            "status": "completed",
            "final_val_loss": loss,
            "best_val_loss": loss,
            "steps": 300,
            "curve": curve,
            "step_ms_median": 1.0,
            "fwd_bwd_ms_median": None,
            "opt_ms_median": None,
            "refresh_ms_median": None,
            "tokens_per_s": None,
            "peak_mem_bytes": None,
            "timing_context": {"host": "h", "invocation": "x", "device": "cpu", "parallel": 1},
        }

    base_curve = [{"step": 300, "val_loss": 1.75, "seconds": 40.0}]
    records = [
        rec("muon", 0, 1.70, base_curve, True),
        rec("muon", 1, 1.80, base_curve, True),
        rec("mousse", 0, 1.5, CURVE),
        rec("mousse", 1, 1.5, CURVE),
    ]
    v = summarize(records)["variants"][1]
    assert v["final_val_loss_mean"] == 1.5 and v["n_seeds"] == 2
    assert v["final_val_loss_std"] == 0.0
    assert v["speedup"] == pytest.approx(300 / 250)
    assert v["speedup_time"] == pytest.approx(40 / 30)
    assert v["p_value"] == pytest.approx(
        __import__("mousse.experiments.stats", fromlist=["x"]).welch_t_test(
            [1.5, 1.5], [1.70, 1.80]
        )["p"]
    )
    assert statistics.fmean([1.70, 1.80]) == pytest.approx(1.75)


# ---- the command line ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ablate_tune_end_to_end_and_rerun_skips_everything(tmp_path):
    args = [
        "ablate",
        "--optimizer",
        "muon",
        "--no-baseline",
        "--tune",
        "lr=0.01,0.02",
        "--seeds",
        "2",
        "--steps",
        "4",
        "--eval-every",
        "2",
        *FAST,
        "--ablation-dir",
        tmp_path / "a",
        "--max-runs",
        "40",
    ]
    first = invoke_cli(*args)
    assert first.exit_code == 0, first.stderr
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    for v in results["variants"]:  # the centre (mousse) and muon
        assert v["tuned"]["lr"] in (0.00125, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)
        assert v["n_seeds"] == 2
    trained = len(list((tmp_path / "a" / "runs").iterdir()))
    last = [line for line in first.stderr_lines() if "completed after" in line][-1]
    assert last.endswith(f"; {trained} of {trained} runs done")  # tuning decided: exact
    second = invoke_cli(*args)
    assert second.exit_code == 0 and "queued" not in second.stderr
    assert len(list((tmp_path / "a" / "runs").iterdir())) == trained


def test_ablate_tune_dry_run_counts_and_max_runs(tmp_path):
    dry = invoke_cli(
        "ablate",
        "--alpha",
        "0.0",
        "--tune",
        "lr",
        "--dry-run",
        "--ablation-dir",
        tmp_path / "a",
        "--max-runs",
        "100",
    )
    assert dry.exit_code == 0
    # 3 variants x (5 + 3 extensions + 3 comparison seeds, none of them a tuning seed)
    assert "at most 33 runs" in dry.stderr
    assert "tuning seeds [1000]" in dry.stderr and "the default 1 keeps" in dry.stderr
    assert "0.03/0.06/0.12/0.24/0.48" in dry.stderr  # around tiny's lr 0.12
    refused = invoke_cli(
        "ablate",
        "--alpha",
        "0.0",
        "--tune",
        "lr",
        "--dry-run",
        "--ablation-dir",
        tmp_path / "a",
        "--max-runs",
        "20",
    )
    assert_one_line_error(refused, "up to 33 runs, more than --max-runs 20")
    # the README's tuned example plans up to 55 runs: within the default guard
    readme = ("--alpha", "0.0,0.125,0.25", "--tune", "lr", "--seeds", "3", "--dry-run")
    assert invoke_cli("ablate", *readme, "--ablation-dir", tmp_path / "b").exit_code == 0


@pytest.mark.slow
def test_untuned_single_seed_output_says_what_it_does_not_establish(tmp_path):
    out = invoke_cli(
        "ablate",
        "--optimizer",
        "muon",
        "--no-baseline",
        "--steps",
        "2",
        *FAST,
        "--ablation-dir",
        tmp_path / "a",
    )
    assert out.exit_code == 0
    assert "untuned" in out.stdout and "--tune lr" in out.stdout and "--seeds 3" in out.stdout


@pytest.mark.slow
def test_ablate_over_several_presets_reports_per_scale(tmp_path):
    root = tmp_path / "scale"
    out = invoke_cli(
        "ablate",
        "--preset",
        "tiny,small",
        "--alpha",
        "0.0",
        "--steps",
        "2",
        *FAST,
        "--ablation-dir",
        root,
    )
    assert out.exit_code == 0, out.stderr
    assert "speedup by scale" in out.stdout
    assert (root / "tiny" / "results.json").is_file() and (
        root / "small" / "results.json"
    ).is_file()
    scale = json.loads((root / "scale.json").read_text())
    assert scale["presets"] == ["tiny", "small"]
    assert {(r["preset"], r["variant"]) for r in scale["rows"]} == {
        (p, v) for p in ("tiny", "small") for v in ("muon", "mousse", "alpha=0.0")
    }
    again = invoke_cli("report", root, "--format", "json")
    assert json.loads(again.stdout)["scale"]["presets"] == ["tiny", "small"]
    (root / "scale.json").unlink()  # per-preset dirs run by separate invocations: found by name
    found = invoke_cli("report", root, "--format", "json")
    assert sorted(json.loads(found.stdout)["scale"]["presets"]) == ["small", "tiny"]
    bad = invoke_cli("ablate", "--preset", "tiny,tiny", "--alpha", "0.0", "--dry-run")
    assert_one_line_error(bad, "names a preset twice")


def test_categorical_phase_resumes_and_shards_like_a_numeric_one(tmp_path):
    """lr then momentum_style: the categorical phase starts only once lr is decided, from disk,
    and its runs split over shards like any others."""
    ab = _tuned_ablation(tmp_path, tune="lr=0.01,0.02,0.04,momentum_style=heavy_ball,nesterov")
    style = {"heavy_ball": 0.1, "nesterov": 0.0}
    loss = lambda run: (
        abs(math.log2(run.knobs["lr"] / 0.02))
        + style[run.knobs.get("momentum_style", "heavy_ball")]
    )
    assert all("momentum_style" not in r.knobs for r in ab.wanted())
    _finish_wanted(ab, loss)
    phase2 = Ablation(ab.plan, ab.dir).wanted()  # a fresh process reads phase 1 from disk
    # tiny runs all three with Nesterov: that value's runs are phase 1's best, trained already
    assert {r.knobs["momentum_style"] for r in phase2} == {"heavy_ball"}
    assert {r.variant for r in phase2} == {"muon", "mousse", "alpha=0.0"}
    assert all(r.knobs["lr"] == 0.02 for r in phase2)
    halves = [{r.name for r in phase2 if in_shard(r.name, (i, 2))} for i in (1, 2)]
    assert halves[0] | halves[1] == {r.name for r in phase2} and not halves[0] & halves[1]
    while _finish_wanted(ab, loss):
        pass
    assert all(
        v["tuned"] == {"lr": 0.02, "momentum_style": "nesterov"} for v in ab.results()["variants"]
    )


def test_a_plan_freezes_its_grid_centres_against_later_preset_changes(tmp_path, monkeypatch):
    """The default grid is centred on each variant's own value when the plan is made; an
    ablation dir replays that grid even after the preset's lr changes."""
    import mousse.train.presets as presets

    ab = _tuned_ablation(tmp_path, tune="lr")
    first = {r.name for r in ab.wanted()}
    tiny = presets.PRESETS["tiny"]
    monkeypatch.setitem(
        presets.PRESETS,
        "tiny",
        __import__("dataclasses").replace(
            tiny, lrs={**tiny.lrs, "mousse": tiny.lrs["mousse"] * 4, "muon": tiny.lrs["muon"] * 4}
        ),
    )
    assert {r.name for r in Ablation(ab.plan, ab.dir).wanted()} == first
    assert ab.plan.tune["centres"]["mousse"] == {"lr": tiny.lrs["mousse"]}


def test_a_variant_keeps_the_knob_it_sweeps_while_the_others_tune_it(tmp_path):
    plan = plan_ablation(
        {"momentum_style": ["heavy_ball"]},
        base={"preset": "tiny", "momentum_style": "nesterov"},
        seeds=(0,),
        tune=tune_spec(parse_tune("lr=0.01,0.02,momentum_style", SETTING_CHOICES)),
    )
    ab = Ablation(plan, tmp_path / "abl")
    grids = ab.grids()
    assert [k for k, _ in grids["momentum_style=heavy_ball"]] == ["lr"]
    assert [k for k, _ in grids["mousse"]] == ["lr", "momentum_style"]
    # lr: 2 values + 3 extensions each; the style phase, for muon and mousse only: its 3 rules
    # but Nesterov, their own (the lr phase's runs); then seed 0 at the tuned values
    assert ab.upper_bound_runs() == 3 * 5 + 2 * 2 + 3
    penalty = {"nesterov": 0.0, "heavy_ball": 0.05, "ema": 0.1}
    while _finish_wanted(
        ab, lambda run: run.knobs["lr"] + penalty[run.knobs.get("momentum_style", "nesterov")]
    ):
        pass
    by_name = {v["variant"]: v for v in ab.results()["variants"]}
    assert by_name["momentum_style=heavy_ball"]["tuned"] == {"lr": 0.01 / 8}  # kept, though worse
    assert by_name["mousse"]["tuned"]["momentum_style"] == "nesterov"
    runs = [r for r in ab.final_runs() if r.variant == "momentum_style=heavy_ball"]
    assert runs and all(r.knobs["momentum_style"] == "heavy_ball" for r in runs)


def test_same_runs_drops_trailing_knobs_at_the_variants_own_value():
    centre = {"lr": 0.06, "momentum": 0.8, "momentum_style": "nesterov"}
    full = {"lr": 0.12, "momentum": 0.8, "momentum_style": "nesterov"}
    assert same_runs(full, centre) == [full, {"lr": 0.12, "momentum": 0.8}, {"lr": 0.12}]
    assert same_runs({"lr": 0.06}, centre) == [{"lr": 0.06}]  # the first knob stays
    # only trailing knobs: no earlier phase ran {lr, momentum_style} without momentum
    mid = {"lr": 0.12, "momentum": 0.8, "momentum_style": "heavy_ball"}
    assert same_runs(mid, centre) == [mid]


def test_a_phase_does_not_train_again_the_run_of_the_variants_own_value(tmp_path):
    """tiny runs every variant at momentum 0.8: the momentum phase trains 0.9, 0.95 and 0.98
    only, and a variant tuned to 0.8 compares on seeds named like the lr phase's run; a dir that
    trained the longer name (before this) keeps using it."""
    ab = _tuned_ablation(tmp_path, tune="lr=0.01,0.02,0.04,momentum")
    best = {"muon": 0.8, "mousse": 0.9, "alpha=0.0": 0.8}
    loss = lambda run: (
        abs(math.log2(run.knobs["lr"] / 0.02))
        + abs(run.knobs.get("momentum", 0.8) - best[run.variant])
    )
    # lr: 3 + 3 extensions; momentum: 4 + 3 extensions less 0.8's run; seeds 0 and 1
    assert ab.upper_bound_runs() == 3 * (6 + 6 + 2)
    assert len(ab.wanted()) == 9
    _finish_wanted(ab, loss)
    phase2 = ab.wanted()
    assert sorted(r.knobs["momentum"] for r in phase2) == sorted([0.9, 0.95, 0.98] * 3)
    while _finish_wanted(ab, loss):
        pass
    # 3 lrs, 3 new momenta, seeds 0 and 1; 0.8 at the grid's bottom adds 0.711 for muon and
    # alpha=0.0
    assert len(list((ab.dir / "runs").iterdir())) == 3 * (3 + 3 + 2) + 2
    finals = {r.name for r in ab.final_runs()}
    assert {"muon@lr=0.02-s0", "muon@lr=0.02-s1", "mousse@lr=0.02+momentum=0.9-s1"} <= finals
    assert {v["variant"]: v["tuned"] for v in ab.results()["variants"]}["muon"] == {
        "lr": 0.02,
        "momentum": 0.8,
    }
    older = Ablation(ab.plan, tmp_path / "older")
    muon = ab.plan.variants["muon"]
    (older.dir / "runs" / "muon@lr=0.02+momentum=0.8-s0").mkdir(parents=True)
    assert older.tuned_run(muon, {"lr": 0.02, "momentum": 0.8}, 0).name == (
        "muon@lr=0.02+momentum=0.8-s0"
    )
    assert older.tuned_run(muon, {"lr": 0.02, "momentum": 0.8}, 1).name == "muon@lr=0.02-s1"


def test_tuning_table_shows_each_phase_pending_chosen_and_diverged(tmp_path):
    from mousse.experiments.table_rows import TUNING_COLUMNS, render, tuning_rows

    ab = _tuned_ablation(tmp_path, tune="lr=0.01,0.02,0.04")
    loss = {0.01: None, 0.02: 1.5, 0.04: 1.6}
    for run in ab.wanted():
        if run.knobs["lr"] != 0.04:  # 0.04 still to run
            lr = run.knobs["lr"]
            _write_summary(ab, run, loss[lr], "diverged" if loss[lr] is None else "completed")
    column = TUNING_COLUMNS[2]
    rows = tuning_rows(ab.results())
    assert [(r["Variant"], r["Knob"]) for r in rows] == [
        ("muon", "lr"),
        ("mousse", "lr"),
        ("alpha=0.0", "lr"),
    ]
    assert rows[0][column] == "0.01 diverged · 0.02 1.5000 · 0.04 …"
    _finish_wanted(ab, lambda run: loss[run.knobs["lr"]])
    results = ab.results()
    assert tuning_rows(results)[0][column] == "0.01 diverged · 0.02* 1.5000 · 0.04 1.6000"
    assert "## Tuning" in render(results, "markdown")
    untuned = plan_ablation({"alpha": [0.0]}, base={"preset": "tiny"})
    assert "## Tuning" not in render(Ablation(untuned, tmp_path / "u").results(), "markdown")


def test_time_left_is_the_pace_of_the_finished_runs_shared_by_parallel(tmp_path):
    """A resumed ablation is timed by its own finished runs: training, evaluation and checkpoint
    seconds, divided by the runs that shared the machine, times the runs left at most."""
    ab = _tuned_ablation(tmp_path, tune="lr=0.01,0.02,0.04")
    assert ab.time_left() is None
    bound = ab.upper_bound_runs()
    for i, run in enumerate(ab.wanted()[:2]):
        _write_summary(ab, run, 1.0)
        path = ab.run_dir(run) / "summary.json"
        summary = json.loads(path.read_text())
        summary.update(
            train_seconds=10.0,
            eval_seconds=2.0,
            checkpoint_seconds=0.0,
            timing_context={"parallel": 2 if i else 1},
        )
        path.write_text(json.dumps(summary))
    seconds, runs, done, exact = ab.time_left()
    assert (runs, done, exact) == (bound - 2, 2, False)
    assert seconds == pytest.approx((bound - 2) * (12.0 + 6.0) / 2)
    # once tuning has decided, the runs left are the comparison's still wanted, exactly
    while any(r.seed == 1000 for r in ab.wanted()):
        _finish_wanted(ab, lambda run: 1.0 + run.knobs["lr"])
    _, runs, _, exact = ab.time_left()
    assert exact and runs == len(ab.wanted()) > 0


def test_a_resumed_ablation_is_estimated_and_capped_by_its_own_pace(tmp_path):
    ab = _tuned_ablation(tmp_path, tune="lr=0.01,0.02,0.04")
    ab.prepare()
    for run in ab.wanted()[:3]:
        _write_summary(ab, run, 1.0)  # 2 s of training each
    args = ("ablate", "--preset", "tiny", "--alpha", "0.0", "--tune", "lr=0.01,0.02,0.04")
    args += ("--dry-run",)
    args += ("--ablation-dir", ab.dir, "--seeds", "2", "--max-runs", "100")
    out = invoke_cli(*args)
    assert out.exit_code == 0, out.stderr
    # the first variant decided (a tie picks the grid's centre): its 3 tuning runs and 2
    # comparison runs replace its bound of 8; the others still count theirs
    assert ab.run_count() == (ab.upper_bound_runs() - 3, False)
    runs = ab.run_count()[0] - 3
    assert f"for the {runs} runs left at most, at the pace of the 3 finished" in out.stderr
    refused = invoke_cli(*args, "--max-hours", f"{(runs * 2 - 1) / 3600}")
    assert_one_line_error(refused, "more than --max-hours")
    exact = []  # tuning decided: the count is exact; all run: nothing is left
    while ab.wanted():
        if not any(r.seed == 1000 for r in ab.wanted()):
            left = invoke_cli(*args).stderr
            exact.append(f"for the {len(ab.wanted())} runs left, at the pace of the " in left)
        _finish_wanted(ab, lambda run: 1.0 + run.knobs["lr"])
    assert exact and all(exact)
    done = len(list((ab.dir / "runs").iterdir()))
    assert f"nothing left to run: the {done} runs in the ablation dir finished" in (
        invoke_cli(*args).stderr
    )


def test_recorded_run_records_continue_their_ablation(tmp_path):
    """An ablation recorded in progress (benchmarks/tuned/*-runs: its ablation.toml and each
    finished run's summary, config and env, no checkpoints) continues where it stopped when
    copied into an ablation dir: every recorded run counts as done, none trains again."""
    import shutil
    from pathlib import Path

    from mousse.experiments.sweep import read_plan

    folder = Path(__file__).resolve().parents[2] / "benchmarks" / "tuned"
    records = sorted(folder.glob("*-runs"))
    assert records
    for root in records:
        copy = shutil.copytree(root, tmp_path / root.name)
        ablation = Ablation(read_plan(copy / "ablation.toml", "re-record it"), copy)
        recorded = {p.parent.name for p in copy.glob("runs/*/summary.json")}
        done, total, _ = ablation.tally()
        assert recorded and done == len(recorded) <= total, root.name
        assert not {r.name for r in ablation.wanted()} & recorded, root.name
