"""Ablation planning: sweeps -> named runs, spec files, sharding."""

from pathlib import Path

import pytest

from mousse.experiments.ablation import (
    AblationPlan,
    check_max_runs,
    plan_ablation,
    shard_runs,
    unused_knobs,
)
from mousse.experiments.inputs import parse_seeds, parse_sweep_values
from mousse.experiments.spec import load_spec
from mousse.train import tomlio
from mousse.train.config import ConfigError, TrainConfig, resolve

ABLATIONS = Path(__file__).resolve().parents[2] / "ablations"


def names(plan):
    return [r.name for r in plan.runs]


def test_one_at_a_time_alpha_default_once_and_baseline_first():
    plan = plan_ablation({"alpha": [0.0, 0.125, 0.25]})
    assert names(plan) == ["muon", "mousse", "alpha=0.0", "alpha=0.25"]
    by_name = {r.name: r for r in plan.runs}
    assert by_name["muon"].knobs == {"optimizer": "muon"} and by_name["muon"].is_baseline
    assert by_name["mousse"].knobs == {} and not by_name["mousse"].is_baseline
    assert by_name["alpha=0.25"].knobs == {"alpha": 0.25}
    assert all(r.seed == 0 and r.variant == r.name for r in plan.runs)


def test_one_at_a_time_varies_one_knob_per_run():
    plan = plan_ablation({"sides": ["both", "left", "right"], "factor_norm": ["trace", "none"]})
    assert names(plan) == ["muon", "mousse", "sides=left", "sides=right", "factor_norm=none"]
    assert all(len(r.knobs) <= 1 for r in plan.runs)


def test_grid_is_full_product_with_stable_names():
    plan = plan_ablation({"sides": ["both", "left"], "alpha": [0.125, 0.25]}, mode="grid")
    assert names(plan) == ["muon", "mousse", "sides=left", "alpha=0.25", "alpha=0.25+sides=left"]
    # names follow TrainConfig field order, not the order the flags were given in
    again = plan_ablation({"alpha": [0.125, 0.25], "sides": ["both", "left"]}, mode="grid")
    assert names(again) == names(plan) and again.plan_id() == plan.plan_id()


def test_seeds_repeat_every_variant_with_suffix():
    plan = plan_ablation({"alpha": [0.0, 0.125]}, seeds=[0, 1])
    assert names(plan) == [
        "muon-s0",
        "mousse-s0",
        "alpha=0.0-s0",
        "muon-s1",
        "mousse-s1",
        "alpha=0.0-s1",
    ]
    assert [r.seed for r in plan.runs] == [0, 0, 0, 1, 1, 1]
    assert plan.runs[3].variant == "muon" and plan.runs[3].is_baseline
    assert names(plan_ablation({"alpha": [0.0]}, seeds=[5])) == ["muon", "mousse", "alpha=0.0"]


def test_no_baseline_and_swept_muon_dedupes_with_baseline():
    plan = plan_ablation({"alpha": [0.0, 0.25]}, baseline=False)
    assert names(plan) == ["mousse", "alpha=0.0", "alpha=0.25"] and not any(
        r.is_baseline for r in plan.runs
    )
    plan = plan_ablation({"optimizer": ["mousse", "muon", "adamw"]})
    assert names(plan) == ["muon", "mousse", "adamw"]
    assert [r.is_baseline for r in plan.runs] == [True, False, False]


def test_preconditioner_knobs_dropped_for_muon_family_knobs_for_adamw():
    plan = plan_ablation(
        {"optimizer": ["mousse", "muon", "adamw"], "alpha": [0.0, 0.25], "precond_freq": [1, 10]},
        mode="grid",
    )
    assert names(plan) == [
        "muon",
        "alpha=0.0+precond_freq=1",
        "alpha=0.0",
        "alpha=0.25+precond_freq=1",
        "alpha=0.25",
        "adamw",
    ]
    assert {r.name: r.knobs for r in plan.runs}["adamw"] == {"optimizer": "adamw"}
    # lr (and weight decay) are kept for every optimizer
    plan = plan_ablation(
        {"optimizer": ["muon", "adamw"], "lr": [0.01, 0.02]}, mode="grid", baseline=False
    )
    assert names(plan) == ["muon+lr=0.01", "muon+lr=0.02", "adamw+lr=0.01", "adamw+lr=0.02"]
    plan = plan_ablation(
        {"optimizer": ["adamw"], "weight_decay": [0.0, 0.01]}, mode="grid", baseline=False
    )
    assert names(plan) == ["adamw+weight_decay=0.0", "adamw"]  # 0.01 is AdamW's own


def test_knobs_dropped_per_optimizer_across_the_family():
    """Which knobs each optimizer keeps follows from its resolved knobs, not from its name:
    preconditioner knobs go from the ones that precondition no side (Muon, SpecGD), the family's
    knobs from AdamW, and the rest (orthogonalizer, momentum, ...) stay everywhere."""
    from mousse.optim import OPTIMIZER_CLASSES

    family = list(OPTIMIZER_CLASSES)
    plan = plan_ablation(
        {
            "optimizer": [*family, "adamw"],
            "factor_norm": ["same_trace"],
            "momentum_style": ["nesterov"],
        },
        base={"preset": "160m"},  # the recipes' momentum (tiny moves Mousse's to Nesterov)
        mode="grid",
        baseline=False,
    )
    knobs = {r.knobs.get("optimizer", "mousse"): r.knobs for r in plan.runs}
    assert list(knobs) == [*family, "adamw"]
    for name in family:
        unpreconditioned = OPTIMIZER_CLASSES[name].recipe["sides"] == "none"
        assert ("factor_norm" in knobs[name]) == (not unpreconditioned and name != "tnt"), name
        # nesterov is Muon's own momentum style: it changes every other family member
        assert ("momentum_style" in knobs[name]) == (name != "muon"), name
    assert {n for n in family if OPTIMIZER_CLASSES[n].recipe["sides"] == "none"} == {
        "muon",
        "specgd",
    }
    assert knobs["adamw"] == {"optimizer": "adamw"}
    assert knobs["tnt"] == {"optimizer": "tnt", "momentum_style": "nesterov"}  # same_trace is TNT's


def test_knob_equal_to_the_optimizers_recipe_collapses():
    # Muon's recipe: the you5 schedule and the spectral lr rule (the released baseline's), not
    # torch.optim.Muon's; SOAP's lr rule is none
    plan = plan_ablation(
        {"optimizer": ["muon", "soap"], "ns": ["you5", "muon"], "lr_scale": ["spectral", "none"]},
        mode="grid",
        baseline=False,
    )
    assert names(plan)[:4] == [
        "muon",
        "muon+lr_scale=none",
        "muon+ns=muon",
        "muon+ns=muon+lr_scale=none",
    ]
    assert [n for n in names(plan) if "ns=" not in n] == [
        "muon",
        "muon+lr_scale=none",
        "soap+lr_scale=spectral",
        "soap",
    ]


def test_knob_equal_to_the_model_presets_momentum_collapses():
    """tiny runs Mousse with Nesterov momentum 0.8 (its own tuning) and 160m with the released
    heavy-ball rule at 0.95: a swept value equal to what the preset gives is the centre run, the
    other value a variant, whichever the preset."""
    sweeps = {"momentum_style": ["heavy_ball", "nesterov"], "momentum": [0.8, 0.95]}
    tiny = plan_ablation(sweeps, base={"preset": "tiny"}, baseline=False)
    assert names(tiny) == ["mousse", "momentum=0.95", "momentum_style=heavy_ball"]
    paper = plan_ablation(sweeps, base={"preset": "160m"}, baseline=False)
    assert names(paper) == ["mousse", "momentum=0.8", "momentum_style=nesterov"]
    # a base setting still wins over the preset's
    hb = plan_ablation(sweeps, base={"preset": "tiny", "momentum_style": "heavy_ball"})
    assert names(hb) == ["muon", "mousse", "momentum=0.95", "momentum_style=nesterov"]


def test_sides_none_drops_the_other_preconditioner_knobs_of_that_run():
    plan = plan_ablation(
        {"sides": ["both", "none"], "alpha": [0.125, 0.25]}, mode="grid", baseline=False
    )
    assert names(plan) == ["mousse", "sides=none", "alpha=0.25"]
    # an unpreconditioned optimizer ignores a swept sides (and with it alpha)
    plan = plan_ablation(
        {"optimizer": ["specgd"], "sides": ["both"], "alpha": [0.25]}, mode="grid", baseline=False
    )
    assert names(plan) == ["specgd"]


def test_adam_graft_still_changes_an_unwhitened_run():
    """Without whitening, graft="orthogonalizer" is a no-op like "none", but "adam" replaces the
    step with Adam's: it is kept, and only it."""
    plan = plan_ablation(
        {"optimizer": ["muon"], "graft": ["orthogonalizer", "adam", "none"]},
        mode="grid",
        baseline=False,
    )
    assert names(plan) == ["muon", "muon+graft=adam"]
    plan = plan_ablation(
        {"sides": ["none"], "graft": ["adam", "orthogonalizer"]}, mode="grid", baseline=False
    )
    assert names(plan) == ["sides=none+graft=adam", "sides=none"]


def test_whole_family_plan_with_base_optimizer():
    plan = plan_ablation({"optimizer": ["shampoo", "soap", "splus", "tnt", "specgd"]})
    assert names(plan) == ["muon", "mousse", "shampoo", "soap", "splus", "tnt", "specgd"]
    # a base optimizer is the centre: its name and its own knobs
    plan = plan_ablation({"precond_freq": [10, 100]}, base={"optimizer": "shampoo"}, baseline=False)
    assert names(plan) == ["shampoo", "precond_freq=10"]
    assert plan.default_dir_name().startswith("ablate-precond_freq-")


def test_base_defines_the_centre():
    plan = plan_ablation(
        {"alpha": [0.125, 0.25]}, base={"preset": "tiny", "alpha": "0.25", "steps": 50}
    )
    assert plan.base == {"preset": "tiny", "alpha": 0.25, "steps": 50, "split": "files"}
    assert names(plan) == ["muon", "mousse", "alpha=0.125"]


def test_names_unique_and_filesystem_safe():
    plan = plan_ablation({"data": ["a/b.bin", "a_b.bin", "c d"], "eps": [1e-6]}, seeds=3)
    runs = names(plan)
    assert len(set(runs)) == len(runs) == 3 * 6
    assert all("/" not in n and " " not in n for n in runs)


def test_plan_id_stable_and_sensitive():
    a = plan_ablation({"alpha": [0.0, 0.125, 0.25]})
    assert a.plan_id() == plan_ablation({"alpha": ["0.0", "0.125", "0.25"]}).plan_id()
    assert len(a.plan_id()) == 8 and a.default_dir_name() == f"ablate-alpha-{a.plan_id()}"
    others = [
        plan_ablation({"alpha": [0.0, 0.25]}),
        plan_ablation({"alpha": [0.0, 0.125, 0.25]}, seeds=2),
        plan_ablation({"alpha": [0.0, 0.125, 0.25]}, baseline=False),
        plan_ablation({"alpha": [0.0, 0.125, 0.25]}, base={"steps": 10}),
        plan_ablation({"alpha": [0.0, 0.125, 0.25]}, mode="grid"),
    ]
    assert len({a.plan_id(), *(p.plan_id() for p in others)}) == 6


def test_checkpointing_and_logging_settings_make_no_other_plan():
    """When a run checkpoints and logs never changes what it computes: a rerun may change them."""
    a = plan_ablation({"alpha": [0.0, 0.25]}, base={"steps": 10})
    b = plan_ablation(
        {"alpha": [0.0, 0.25]},
        base={"steps": 10, "checkpoint_every": 5, "keep_checkpoints": 3, "log_every": 1},
    )
    assert a.plan_id() == b.plan_id() and a.defining() == b.defining()
    assert a.to_dict() != b.to_dict()  # recorded all the same
    assert plan_ablation({"alpha": [0.0, 0.25]}, base={"steps": 11}).plan_id() != a.plan_id()


def test_to_dict_from_dict_round_trip_via_toml():
    plan = plan_ablation(
        {"alpha": [0.0, 0.25], "factor_norm": ["trace", "none"], "sides": ["left"]},
        base={"preset": "tiny", "steps": 40},
        mode="grid",
        seeds=[0, 3],
    )
    back = AblationPlan.from_dict(tomlio.loads(tomlio.dumps(plan.to_dict())))
    assert back == plan and back.plan_id() == plan.plan_id()


@pytest.mark.parametrize(
    ("sweeps", "kwargs", "words"),
    [
        ({"alpah": [0.1]}, {}, ["alpah", "alpha"]),
        ({"alpha": []}, {}, ["empty", "alpha"]),
        ({"alpha": ["high"]}, {}, ["alpha", "high"]),
        ({"sides": ["middle"]}, {}, ["sides", "middle"]),
        ({"graft": [True]}, {}, ["graft", "True", "orthogonalizer, adam, none"]),
        ({"trace_norm": [True]}, {}, ["trace_norm", "factor_norm"]),
        ({"nesterov": [True]}, {}, ["nesterov", "momentum_style"]),
        ({"ns": ["exact"]}, {}, ["ns", "exact", "you5"]),
        ({"seed": [1, 2]}, {}, ["seeds"]),
        ({}, {}, ["nothing to sweep"]),
        ({"alpha": [0.0]}, {"mode": "gird"}, ["gird", "grid"]),
        ({"alpha": [0.0]}, {"seeds": []}, ["seeds"]),
        ({"alpha": [0.0]}, {"base": {"stpes": 3}}, ["stpes", "steps"]),
    ],
)
def test_plan_errors(sweeps, kwargs, words):
    with pytest.raises(ConfigError) as exc:
        plan_ablation(sweeps, **kwargs)
    assert all(w in str(exc.value) for w in words)


def test_parse_sweep_values():
    assert parse_sweep_values("alpha", "0.0,0.125, 0.25,0.125") == [0.0, 0.125, 0.25]
    assert parse_sweep_values("bias-correction", "on,off") == [True, False]
    assert parse_sweep_values("sides", "both,left,right") == ["both", "left", "right"]
    assert parse_sweep_values("factor-norm", "trace,none") == ["trace", "none"]
    assert parse_sweep_values("orthogonalizer", "newton_schulz,identity,sign,exact") == [
        "newton_schulz",
        "identity",
        "sign",
        "exact",
    ]
    assert parse_sweep_values("post_alpha", "0,0.125") == [0.0, 0.125]
    assert parse_sweep_values("precond_freq", "1,10,100") == [1, 10, 100]
    assert parse_sweep_values("optimizer", "shampoo,soap,splus,tnt,specgd,adamw") == [
        "shampoo",
        "soap",
        "splus",
        "tnt",
        "specgd",
        "adamw",
    ]
    for knob, text in [
        ("alpha", ""),
        ("alpha", "x"),
        ("bias_correction", "maybe"),
        ("optimizer", "sgd"),
        ("precond_freq", "1.5"),
        ("graft", "on"),
        ("factor_norm", "off"),
        ("orthogonalizer", "svd"),
        ("ns", "exact"),
        ("momentum_style", "polyak"),
    ]:
        with pytest.raises(ConfigError, match=knob):
            parse_sweep_values(knob, text)


def test_parse_seeds():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,5,7") == [0, 5, 7]
    assert parse_seeds("5,") == [5]
    for bad in ("0", "-1", "a", "1,x", ",", "1,-2"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_check_max_runs():
    plan = plan_ablation({"alpha": [0.0, 0.125, 0.25]}, seeds=3)
    check_max_runs(plan, 12)
    with pytest.raises(ConfigError, match="--max-runs"):
        check_max_runs(plan, 11)


def test_shard_runs_cover_everything_once():
    runs = plan_ablation({"alpha": [0.0, 0.125, 0.25], "sides": ["left", "right"]}, seeds=3).runs
    for n in (1, 2, 3, 5, len(runs) + 2):
        shards = [shard_runs(runs, f"{i}/{n}") for i in range(1, n + 1)]
        assert sorted(r.name for s in shards for r in s) == sorted(r.name for r in runs)
        assert shards == [shard_runs(runs, f"{i}/{n}") for i in range(1, n + 1)]
    for bad in ("0/2", "3/2", "1", "a/b", "1/0", ""):
        with pytest.raises(ConfigError, match="shard"):
            shard_runs(runs, bad)


@pytest.mark.parametrize("path", sorted(ABLATIONS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_load_and_plan(path):
    spec = load_spec(path)
    name = spec.pop("name")
    plan = plan_ablation(**spec)
    assert plan.base["preset"] in ("tiny", "medium") and plan.runs[0].is_baseline
    assert plan.default_dir_name(name).startswith(f"ablate-{name}-")
    assert "Run:" in path.read_text() and "mousse ablate ablations/" in path.read_text()


def test_shipped_specs_are_the_papers_studies():
    sweeps = {p.stem: load_spec(p)["sweeps"] for p in ABLATIONS.glob("*.toml")}
    assert sweeps == {
        "alpha": {"alpha": [0.0, 0.125, 0.25]},
        "trace_norm": {"factor_norm": ["trace", "none"]},
        "sides": {"sides": ["both", "left", "right"]},
        "precond_freq": {"precond_freq": [1, 10, 100]},
        "optimizers": {
            "optimizer": ["mousse", "muon", "adamw", "shampoo", "soap", "splus", "tnt", "specgd"]
        },
        "family": {
            "momentum_style": ["heavy_ball", "nesterov", "ema"],
            "post_alpha": [0.0],
            "graft": ["orthogonalizer", "none"],
            "orthogonalizer": ["newton_schulz", "identity", "sign", "exact"],
        },
        "momentum-rule": {"momentum_style": ["heavy_ball", "nesterov"]},
        "decisive": {"momentum_style": ["heavy_ball", "nesterov"]},
        "budgets": {"momentum_style": ["heavy_ball", "nesterov"]},
        "refresh": {
            "refresh": ["eigh", "qr", "root"],
            "refresh_delay": [0, 1, 5],
            "refresh_schedule": ["offset", "staggered"],
        },
        "paper-tuned-momentum": {
            "alpha": [0.0, 0.125, 0.25],
            "factor_norm": ["trace", "none"],
            "sides": ["both", "left", "right"],
            "precond_freq": [1, 10, 100],
            "momentum_style": ["heavy_ball", "nesterov"],
        },
        "paper-tuned": {
            "alpha": [0.0, 0.125, 0.25],
            "factor_norm": ["trace", "none"],
            "sides": ["both", "left", "right"],
            "precond_freq": [1, 10, 100],
        },
    }
    assert load_spec(ABLATIONS / "paper-tuned.toml")["tune"]["knobs"] == ["lr"]


def test_load_spec_tune_table_and_preset_list(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        '[base]\npreset = ["tiny", "small"]\n[sweep]\nalpha = [0.0]\n'
        '[tune]\nknobs = ["lr", "momentum_style"]\nlr = [0.01, 0.02]\nseeds = 2\n'
    )
    spec = load_spec(path)
    assert spec["presets"] == ["tiny", "small"] and spec["base"] == {}
    assert spec["tune"] == {
        "knobs": ["lr", "momentum_style"],
        "grids": {"lr": [0.01, 0.02]},
        "seeds": [1000, 1001],  # a count of tuning seeds starts apart from the comparison's
        "max_extensions": 3,
    }
    path.write_text('[sweep]\nalpha = [0.0]\n[tune]\nknobs = ["lr"]\nlrr = [0.1]\n')
    with pytest.raises(ConfigError, match="'lrr', which is not a tuned knob"):
        load_spec(path)


def test_load_spec_a_list_of_one_preset_is_the_base_preset(tmp_path):
    """`preset = ["small"]` plans small, as `preset = "small"` does (not the default preset)."""
    path = tmp_path / "s.toml"
    path.write_text('[base]\npreset = ["small"]\n[sweep]\nalpha = [0.0]\n')
    assert load_spec(path) == {"base": {"preset": "small"}, "sweeps": {"alpha": [0.0]}}


def test_load_spec_full(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'name = "x"\nmode = "grid"\nseeds = [1, 2]\nbaseline = false\n'
        '[base]\npreset = "tiny"\nsteps = 30\n'
        '[sweep]\nalpha = [0.0, 0.25]\nfactor-norm = ["trace", "none"]\n'
    )
    assert load_spec(path) == {
        "name": "x",
        "mode": "grid",
        "seeds": [1, 2],
        "baseline": False,
        "base": {"preset": "tiny", "steps": 30},
        "sweeps": {"alpha": [0.0, 0.25], "factor_norm": ["trace", "none"]},
    }
    path.write_text("seeds = 2\n[sweep]\nalpha = [0.0]\n")
    assert load_spec(path) == {"seeds": [0, 1], "sweeps": {"alpha": [0.0]}}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[sweep]\nalpah = [0.1]\n", ["alpah", "alpha"]),
        ("[sweep]\nalpha = ['big']\n", ["alpha", "big"]),
        ("[sweep]\nalpha = []\n", ["empty", "alpha"]),
        ("[sweep]\n", ["empty [sweep]"]),
        ("mode = 'grid'\n", ["empty [sweep]"]),
        ("sweeps = 1\n[sweep]\nalpha = [0.1]\n", ["sweeps", "'sweep'"]),
        ("[sweep]\nalpha = 0.1\n", ["list", "alpha"]),
        ("[base]\nstpes = 3\n[sweep]\nalpha = [0.1]\n", ["stpes", "steps"]),
        ("mode = 'gird'\n[sweep]\nalpha = [0.1]\n", ["gird", "grid"]),
        ("seeds = 0\n[sweep]\nalpha = [0.1]\n", ["seeds"]),
        ("baseline = 'yes'\n[sweep]\nalpha = [0.1]\n", ["baseline"]),
        ("[sweep\nalpha = [0.1]\n", ["not valid TOML"]),
        ("[base]\npreset = ['../../x']\n[sweep]\nalpha = [0.1]\n", ["unknown preset", "../../x"]),
    ],
)
def test_load_spec_errors_name_file_and_key(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_spec(path)
    assert str(path) in str(exc.value)
    assert all(w in str(exc.value) for w in words), str(exc.value)


def test_load_spec_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "settings, unused",
    [
        ({"optimizer": "muon", "refresh_delay": 10}, ["refresh_delay"]),
        ({"optimizer": "muon", "alpha": 0.5, "momentum": 0.9}, ["alpha"]),
        ({"optimizer": "muon", "graft": "adam"}, []),  # Adam grafting replaces Muon's step
        ({"optimizer": "muon", "refresh_delay": 0}, []),  # what Muon gets anyway
        ({"optimizer": "adamw", "alpha": 0.5, "lr": 1e-3}, ["alpha"]),
        ({"optimizer": "mousse", "refresh_delay": 3}, []),
    ],
)
def test_unused_knobs_are_those_an_ablation_would_drop(settings, unused):
    assert unused_knobs(settings) == unused


@pytest.mark.parametrize("optimizer", ["mousse", "muon", "shampoo", "tnt", "adamw"])
@pytest.mark.parametrize("preset", ["tiny", "small", "medium"])
def test_the_planners_reference_is_what_the_run_resolves(optimizer, preset):
    """The planner compares a variant's knobs with what its run would get anyway; that is what
    `config.resolve` gives the run (one precedence: recipe < LM recipe < preset < settings)."""
    from mousse.experiments.ablation import _reference
    from mousse.optim.knobs import RUN_KNOBS
    from mousse.train.config import resolve

    base = {"preset": preset, "precond_freq": 7} if optimizer != "adamw" else {"preset": preset}
    cfg = resolve({**base, "optimizer": optimizer})
    reference = _reference(optimizer, base)
    assert {k: reference[k] for k in RUN_KNOBS if k != "lr"} == {
        k: getattr(cfg, k) for k in RUN_KNOBS if k != "lr"
    }


def test_a_schedule_sweep_keeps_the_base_cooldown_for_its_wsd_runs_only():
    """cosine against WSD with a cooldown: the cooldown is the WSD arm's; the cosine arm, which
    has none, runs without it rather than being refused."""
    plan = plan_ablation(
        {"schedule": ["cosine", "wsd"]},
        base={"cooldown": 0.3, "cooldown_shape": "1-sqrt"},
        mode="grid",
        baseline=False,
    )
    cfgs = {run.variant: resolve(plan.settings(run)) for run in plan.runs}
    assert {v: (c.schedule, c.cooldown, c.cooldown_shape) for v, c in cfgs.items()} == {
        "mousse": ("cosine", TrainConfig.cooldown, TrainConfig.cooldown_shape),
        "schedule=wsd": ("wsd", 0.3, "1-sqrt"),
    }


def test_a_base_cooldown_that_no_run_uses_is_refused():
    with pytest.raises(ConfigError, match=r"--cooldown 0\.3: no run of this ablation is WSD"):
        plan_ablation({"alpha": [0.0, 0.25]}, base={"cooldown": 0.3})
    with pytest.raises(ConfigError, match=r"--cooldown-shape 1-sqrt: no run .* drop --cooldown-sh"):
        plan_ablation({"alpha": [0.0, 0.25]}, base={"cooldown_shape": "1-sqrt"})
    plan = plan_ablation({"alpha": [0.0, 0.25]}, base={"cooldown": 0.3, "schedule": "wsd"})
    assert {resolve(plan.settings(run)).cooldown for run in plan.runs} == {0.3}


def test_budgets_have_one_spelling_in_a_plan_and_in_one_recorded_before():
    plans = [
        plan_ablation({"alpha": [0.0, 0.25]}, base={"budgets": b})
        for b in ("1,0.5", "0.5,1", "0.50,1.0")
    ]
    assert {p.plan_id() for p in plans} == {plans[0].plan_id()}
    assert plans[0].base["budgets"] == "0.5,1"
    recorded = plans[0].to_dict()
    recorded["base"]["budgets"] = "1.0,0.50"  # as an earlier version recorded it
    assert AblationPlan.from_dict(recorded).plan_id() == plans[0].plan_id()
