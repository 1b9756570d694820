"""`mousse train` end to end: run directory contents, determinism, precedence of settings, target
loss, divergence, graceful stop and bad input (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from support.cli import (
    FAST,
    FAST_SETTINGS,
    assert_one_line_error,
    read_metrics,
    summary,
    train_losses,
    val_losses,
)

from mousse.optim.knobs import RUN_KNOBS
from mousse.train import tomlio
from mousse.train.checkpoint import FILES, list_checkpoints, read_checkpoint
from mousse.train.config import FIELD_TYPES, matrix_kwargs, resolve
from mousse.train.events import StepLogged
from mousse.train.trainer import Trainer

TRAIN_KEYS = ("step", "train_loss", "lr", "step_ms", "tokens_per_s")
SUMMARY_KEYS = ("run_dir", "status", "steps", "final_val_loss", "best_val_loss", "step_ms_median")


def no_pickle_under(root: Path) -> None:
    """Every file under root is text/JSON/TOML or safetensors; nothing torch.save/pickle-shaped."""
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        assert (
            path.suffix in (".toml", ".json", ".jsonl", ".safetensors") or path.name == ".lock"
        ), path
        data = path.read_bytes()
        if path.suffix == ".safetensors":  # u64 header length, then that much JSON: the format
            size = int.from_bytes(data[:8], "little")
            assert 8 + size <= len(data), f"{path} is no safetensors file"
            json.loads(data[8 : 8 + size])
            continue  # (its first byte is the header length's: 0x80 is no sign of pickle there)
        assert not data.startswith(b"\x80"), f"{path} looks like a pickle"
        assert data[:4] != b"PK\x03\x04", f"{path} looks like a torch.save zip"


# ---- end to end through the real executable ------------------------------------------------------


@pytest.mark.slow
def test_train_cli_end_to_end(mousse_proc, tmp_path):
    run_dir = tmp_path / "run"
    res = mousse_proc(
        "train",
        *FAST,
        "--steps",
        "12",
        "--eval-every",
        "5",
        "--log-every",
        "2",
        "--checkpoint-every",
        "5",
        "--seed",
        "3",
        "--run-dir",
        run_dir,
        "--json",
    )
    assert res.exit_code == 0, res
    # stdout holds only the JSON object; the human lines went to stderr, plain (no ANSI codes)
    out = res.json()
    for key in SUMMARY_KEYS:
        assert key in out, key
    assert out["status"] == "completed" and out["steps"] == 12
    assert Path(out["run_dir"]) == run_dir
    assert math.isfinite(out["final_val_loss"]) and out["best_val_loss"] <= out["final_val_loss"]
    assert out["step_ms_median"] > 0
    assert "\x1b[" not in res.stderr and "step 12/12" in res.stderr
    # plain lines are whole lines (no wrapping at 80 columns)
    assert any(
        line.startswith("completed after 12 steps") and line.endswith("per refresh)")
        for line in res.stderr.splitlines()
    ), res.stderr
    assert "Traceback" not in res.stderr

    # config.toml: the resolved settings (flags, then the tiny preset's values filled in)
    cfg = tomlio.load(run_dir / "config.toml")
    assert cfg["preset"] == "tiny" and cfg["steps"] == 12 and cfg["seed"] == 3
    assert cfg["d_model"] == 64 and cfg["n_layers"] == 2 and cfg["lr"] == 0.12
    assert cfg["checkpoint_every"] == 5 and cfg["eval_every"] == 5
    assert resolve(cfg).to_dict() == {**resolve({}).to_dict(), **cfg}

    env = json.loads((run_dir / "env.json").read_text())
    for key in ("mousse", "python", "torch", "device", "git_revision", "seed", "argv"):
        assert key in env, key
    assert env["torch"] == torch.__version__ and env["seed"] == 3
    assert "train" in env["argv"] and "--json" in env["argv"]

    rows = read_metrics(run_dir)
    train_rows = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]
    for r in train_rows:
        assert all(k in r for k in TRAIN_KEYS), r
        assert math.isfinite(r["train_loss"]) and r["step_ms"] > 0 and r["tokens_per_s"] > 0
    assert train_rows[0]["lr"] > train_rows[-1]["lr"] == 0.0  # cosine down to min_lr_frac 0
    assert sorted(r["step"] for r in rows if "val_loss" in r) == [0, 5, 10, 11, 12]
    assert val_losses(run_dir)[12] == out["final_val_loss"]

    saved = summary(run_dir)
    assert {k: saved[k] for k in SUMMARY_KEYS} == {k: out[k] for k in SUMMARY_KEYS}

    # checkpoints every 5 steps and at the end; keep_checkpoints 2 keeps step-10 and step-12
    ckpts = list_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in ckpts] == ["step-10", "step-12"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-10", "step-12"]
    for ckpt in ckpts:
        assert sorted(f.name for f in ckpt.iterdir()) == sorted([*FILES, "checksums.json"])
        read_checkpoint(ckpt)
    no_pickle_under(run_dir)


# ---- determinism -----------------------------------------------------------------------------------


def test_same_seed_same_losses_other_seed_differs(cli, tmp_path):
    def run(name, seed):
        res = cli(
            "train",
            *FAST,
            "--steps",
            "8",
            "--eval-every",
            "4",
            "--log-every",
            "1",
            "--seed",
            seed,
            "--run-dir",
            tmp_path / name,
            "--json",
        )
        assert res.exit_code == 0, res
        return train_losses(tmp_path / name), val_losses(tmp_path / name)

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert list(a[0]) == list(range(1, 9))
    assert a == b  # bit-identical train and val losses
    assert a[0] != c[0] and a[1] != c[1]


@pytest.mark.slow
def test_compile_trains_like_eager(cli, tmp_path):
    """--compile (model and optimizer under torch.compile, inductor) follows the eager run across
    refreshes and the LR schedule."""

    def run(name, *flags):
        res = cli(
            "train",
            *FAST,
            "--steps",
            "12",
            "--eval-every",
            "12",
            "--log-every",
            "1",
            "--precond-freq",
            "5",
            "--run-dir",
            tmp_path / name,
            "--json",
            "--precision",
            "fp32",  # bf16's rounding would swamp the generated kernels' differences
            *flags,
        )
        assert res.exit_code == 0, res
        return train_losses(tmp_path / name)

    eager, compiled = run("eager", "--compile", "off"), run("compiled", "--compile", "on")
    assert list(compiled) == list(eager)
    for step, loss in eager.items():
        # generated kernels round differently, and msign magnifies small gradient differences:
        # about 1e-7 at step 1, 5e-4 by step 8 (Muon and Mousse runs differ by 3-30% here)
        assert compiled[step] == pytest.approx(loss, rel=2e-3), step
    ran = summary(tmp_path / "compiled")
    assert ran["compiled"] is True and ran["compile_seconds"] > 0  # the first step's extra time
    assert summary(tmp_path / "eager")["compiled"] is False


# ---- settings precedence and target loss ---------------------------------------------------------


def test_flags_override_file_override_preset(cli, tmp_path):
    conf = tmp_path / "run.toml"
    conf.write_text(
        "[train]\nsteps = 40\neval_every = 3\nlr = 0.02\nwarmup_frac = 0.25\nseq_len = 32\n"
    )
    res = cli(
        "train", "--config", conf, *FAST, "--steps", "6", "--run-dir", tmp_path / "r", "--json"
    )
    assert res.exit_code == 0, res
    cfg = tomlio.load(tmp_path / "r" / "config.toml")
    assert cfg["steps"] == 6  # flag beats file
    assert cfg["seq_len"] == 64  # flag (in FAST) beats file
    assert cfg["eval_every"] == 3 and cfg["lr"] == 0.02 and cfg["warmup_frac"] == 0.25  # file
    assert cfg["n_layers"] == 2 and cfg["scalar_lr"] == 0.01  # preset (tiny)
    assert res.json()["steps"] == 6
    assert sorted(val_losses(tmp_path / "r")) == [0, 3, 5, 6]  # 0, every 3, the last quarter


# ---- the matrix optimizer's knobs: class preset < recipe < preset lr < file < flag --------------


def test_knobs_resolve_preset_recipe_preset_lr_file_flag(cli, tmp_path, monkeypatch):
    from mousse.optim import OPTIMIZER_CLASSES
    from mousse.train import presets

    soap = OPTIMIZER_CLASSES["soap"].recipe
    monkeypatch.setitem(
        presets.TRAINING_RECIPES,
        "soap",
        {"lr": 0.5, "beta2": 0.9, "adam_eps": 1e-7, "precond_beta": 0.8, "stat_freq": 2},
    )
    monkeypatch.setitem(presets.get_preset("tiny").lrs, "soap", 0.004)
    cfg = resolve({"optimizer": "soap"})
    assert (cfg.eig_floor, cfg.refresh, cfg.orthogonalizer) == (
        soap["eig_floor"],
        "qr",
        "adam",
    )  # class
    assert (cfg.beta2, cfg.precond_beta, cfg.stat_freq) == (
        0.9,
        0.8,
        2,
    )  # recipe beats class preset
    assert cfg.lr == 0.004  # the preset's lr for soap beats the recipe's

    conf = tmp_path / "run.toml"
    conf.write_text('optimizer = "soap"\nlr = 0.005\nprecond_beta = 0.7\nstat_freq = 3\n')
    res = cli(
        "train",
        "--config",
        conf,
        *FAST,
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--stat-freq",
        "4",
        "--run-dir",
        tmp_path / "r",
        "--json",
    )
    assert res.exit_code == 0, res
    saved = tomlio.load(tmp_path / "r" / "config.toml")
    assert saved["stat_freq"] == 4  # flag beats file
    assert (saved["lr"], saved["precond_beta"]) == (0.005, 0.7)  # file beats preset lr and recipe
    assert (saved["beta2"], saved["adam_eps"]) == (0.9, 1e-7)  # recipe
    assert saved["skip_first_step"] is True and saved["weight_decay_style"] == "after"  # class


def test_every_optimizer_resolves_its_full_recipe():
    from mousse.optim import OPTIMIZER_CLASSES
    from mousse.train.presets import TRAINING_RECIPES, get_preset

    assert set(RUN_KNOBS) <= set(FIELD_TYPES)
    for name, cls in OPTIMIZER_CLASSES.items():
        cfg = resolve({"optimizer": name})
        tiny = get_preset("tiny")
        expected = {**cls.recipe, **TRAINING_RECIPES[name], "lr": tiny.lrs[name]}
        expected.update({"momentum": m} if (m := tiny.momenta.get(name)) is not None else {})
        style = tiny.momentum_styles.get(name)
        expected.update({"momentum_style": style} if style is not None else {})
        assert {k: getattr(cfg, k) for k in RUN_KNOBS} == {k: expected[k] for k in RUN_KNOBS}, name
        for k in RUN_KNOBS:  # the field types fit the engine's values
            assert getattr(cfg, k) is None or isinstance(getattr(cfg, k), FIELD_TYPES[k]), (name, k)
        kwargs = matrix_kwargs(cfg, "fp32")
        assert "lr" not in kwargs and "weight_decay" not in kwargs
        assert kwargs == {
            k: getattr(cfg, k)
            for k in RUN_KNOBS
            if k not in ("lr", "weight_decay") and getattr(cfg, k) is not None
        } | {"ns_dtype": torch.float32}  # auto: the run's precision


def test_ns_dtype_setting_reaches_the_optimizer(cli, tmp_path):
    assert matrix_kwargs(resolve({"ns_dtype": "bf16"}), "fp32")["ns_dtype"] is torch.bfloat16
    assert (
        matrix_kwargs(resolve({"ns_dtype": "fp32", "optimizer": "muon"}), "bf16")["ns_dtype"]
        is torch.float32
    )
    res = cli("train", *FAST, "--steps", "2", "--ns-dtype", "bf16", "--run-dir", tmp_path / "r")
    assert res.exit_code == 0, res
    assert tomlio.load(tmp_path / "r" / "config.toml")["ns_dtype"] == "bf16"
    assert_one_line_error(cli("train", "--ns-dtype", "fp8"), "ns_dtype", "fp8", "bf16")


def test_muon_recipe_is_the_released_baseline():
    """`--optimizer muon` keeps what it always ran: Nesterov momentum 0.95, the you5 schedule,
    the spectral lr rule, weight decay 0.01, no preconditioning, the preset's lr (and on the CPU
    presets the momentum their tuning chose: 0.8)."""
    assert resolve({"optimizer": "muon"}).momentum == 0.8
    assert resolve({"optimizer": "muon", "preset": "160m"}).momentum == 0.95
    cfg = resolve({"optimizer": "muon", "preset": "small"})
    assert (cfg.momentum, cfg.momentum_style, cfg.ns, cfg.ns_steps, cfg.lr_scale) == (
        0.8,
        "nesterov",
        "you5",
        5,
        "spectral",
    )
    assert (cfg.weight_decay, cfg.sides, cfg.alpha, cfg.graft, cfg.lr) == (
        0.01,
        "none",
        0.0,
        "none",
        0.06,
    )
    assert (cfg.orthogonalizer, cfg.weight_decay_style) == ("newton_schulz", "decoupled")
    mousse = resolve({})
    assert (
        mousse.momentum_style,
        mousse.alpha,
        mousse.sides,
        mousse.factor_norm,
        mousse.graft,
    ) == ("nesterov", 0.125, "both", "trace", "orthogonalizer")  # the CPU presets' rule
    assert resolve({"preset": "160m"}).momentum_style == "heavy_ball"  # the released one
    assert resolve({"momentum_style": "heavy_ball"}).momentum_style == "heavy_ball"


def test_derived_defaults_follow_the_resolved_knobs():
    assert resolve({"optimizer": "shampoo"}).precond_start == 101
    cfg = resolve({"optimizer": "shampoo", "precond_freq": 10, "sides": "left"})
    assert (cfg.precond_start, cfg.alpha) == (11, 0.25)
    assert (
        resolve({"optimizer": "shampoo", "precond_freq": 10, "precond_start": 3}).precond_start == 3
    )
    assert resolve({"optimizer": "tnt", "precond_freq": 5}).refresh_warmup == 5


def test_adamw_keeps_only_lr_and_weight_decay():
    cfg = resolve({"optimizer": "adamw", "alpha": 0.3, "momentum_style": "ema"})
    assert (cfg.lr, cfg.weight_decay) == (0.01, 0.01)
    assert all(getattr(cfg, k) is None for k in RUN_KNOBS if k not in ("lr", "weight_decay"))
    assert matrix_kwargs(cfg, "bf16") == {}


def test_old_knob_names_in_saved_configs_still_resolve():
    """Config files and checkpoints written before the family engine keep working."""
    cfg = resolve({"trace_norm": False, "nesterov": True, "graft": False})
    assert (cfg.factor_norm, cfg.momentum_style, cfg.graft) == ("none", "nesterov", "none")
    old_muon = resolve(
        {
            "optimizer": "muon",
            "trace_norm": True,
            "graft": True,
            "nesterov": True,
            "ns": "you5",
            "lr_scale": "spectral",
            "momentum": 0.95,
        }
    )
    assert matrix_kwargs(old_muon, "fp32") == matrix_kwargs(
        resolve({"optimizer": "muon", "momentum": 0.95}), "fp32"
    ) | {"graft": "orthogonalizer"}  # a no-op without preconditioned sides


def test_target_loss_step_recorded_or_null(cli, tmp_path):
    common = [*FAST, "--steps", "9", "--eval-every", "3", "--seed", "1"]
    res = cli("train", *common, "--target-loss", "0.01", "--run-dir", tmp_path / "never", "--json")
    assert res.exit_code == 0, res
    out = res.json()
    assert out["target_step"] is None and out["target_seconds"] is None
    curve = {p["step"]: p["val_loss"] for p in out["curve"]}
    assert sorted(curve) == [0, 3, 6, 7, 8, 9]  # 0, every 3, every step of the last quarter
    assert curve[9] < curve[3] < curve[0], curve  # it learns something in 9 steps

    # a target between the first trained eval and the best is first met at a known later step
    target = (curve[3] + min(curve[6], curve[9])) / 2
    expected = next(s for s in sorted(curve) if curve[s] <= target)
    res = cli(
        "train", *common, "--target-loss", repr(target), "--run-dir", tmp_path / "hit", "--json"
    )
    assert res.exit_code == 0, res
    hit = res.json()
    assert hit["target_step"] == expected > 3
    assert hit["target_seconds"] is not None and hit["target_seconds"] > 0
    assert summary(tmp_path / "hit")["target_step"] == expected


# ---- divergence ----------------------------------------------------------------------------------


def test_huge_lr_diverges_with_exit_3(cli, tmp_path):
    res = cli(
        "train",
        *FAST,
        "--steps",
        "12",
        "--lr",
        "1e6",
        "--scalar-lr",
        "1e3",
        "--run-dir",
        tmp_path / "r",
        "--json",
    )
    assert res.exit_code == 3, res
    out = res.json()
    assert out["status"] == "diverged" and out["steps"] < 12
    assert out["message"] and "loss" in out["message"]
    assert summary(tmp_path / "r")["status"] == "diverged"
    assert "diverged" in res.stderr and "Traceback" not in res.stderr


def test_injected_nan_keeps_last_good_checkpoint(cli, tmp_path, monkeypatch):
    original = Trainer._forward_backward

    def nan_from_step_8(self, step, timer):
        loss = original(self, step, timer)
        return torch.full_like(loss, float("nan")) if step >= 8 else loss

    monkeypatch.setattr(Trainer, "_forward_backward", nan_from_step_8)
    run_dir = tmp_path / "r"
    res = cli(
        "train",
        *FAST,
        "--steps",
        "12",
        "--eval-every",
        "3",
        "--checkpoint-every",
        "3",
        "--log-every",
        "1",
        "--run-dir",
        run_dir,
        "--json",
    )
    assert res.exit_code == 3, res
    out = res.json()
    assert out["status"] == "diverged" and "step 8" in out["message"]
    assert "step 8" in res.stderr
    # the last good checkpoint (step 6) is kept and loads with finite weights; nothing after it
    ckpts = list_checkpoints(run_dir / "checkpoints")
    assert [p.name for p in ckpts] == ["step-3", "step-6"]
    weights = read_checkpoint(ckpts[-1])["model"]
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert max(train_losses(run_dir)) <= 7  # no NaN step was logged as a good step
    assert summary(run_dir)["status"] == "diverged"


# ---- graceful stop ---------------------------------------------------------------------------------


def test_stop_event_interrupts_with_checkpoint_and_resumes_exactly(builtin_data, tmp_path):
    settings = {
        **FAST_SETTINGS,
        "steps": 10,
        "eval_every": 5,
        "log_every": 1,
        "checkpoint_every": 10,
    }
    ref = Trainer(resolve(settings), tmp_path / "ref").run()
    assert ref["status"] == "completed"

    stop = threading.Event()

    def on_event(event):
        if isinstance(event, StepLogged) and event.step == 4:
            stop.set()

    run_dir = tmp_path / "stopped"
    out = Trainer(resolve(settings), run_dir, on_event=on_event, stop=stop).run()
    assert out["status"] == "interrupted" and out["steps"] == 4
    assert summary(run_dir)["status"] == "interrupted"
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step-4"]

    resumed = Trainer(resolve(settings), run_dir, resume=run_dir).run()
    assert resumed["status"] == "completed" and resumed["resumed_from"] == 4
    assert resumed["steps"] == 10
    assert train_losses(run_dir) == train_losses(tmp_path / "ref")  # steps 1-4 kept, 5-10 exact
    assert resumed["final_val_loss"] == ref["final_val_loss"]


def test_ctrl_c_checkpoints_and_exits_130(cli, tmp_path, monkeypatch):
    """SIGINT during a run (the CLI's own handler) stops after the step, checkpoints, exits 130."""
    import mousse_cli.train_cmd as train_cmd

    class InterruptingView(train_cmd.TrainView):
        def __call__(self, event):
            super().__call__(event)
            if isinstance(event, StepLogged) and event.step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_cmd, "TrainView", InterruptingView)
    handler = signal.getsignal(signal.SIGINT)
    run_dir = tmp_path / "r"
    res = cli("train", *FAST, "--steps", "50", "--log-every", "1", "--run-dir", run_dir, "--json")
    assert res.exit_code == 130, res
    out = res.json()
    assert out["status"] == "interrupted" and 3 <= out["steps"] < 50
    assert (run_dir / "checkpoints" / f"step-{out['steps']}").is_dir()
    assert signal.getsignal(signal.SIGINT) is handler  # the CLI's handler is removed again
    resumed = cli("train", "--resume", run_dir, "--json")
    assert resumed.exit_code == 0, resumed
    assert resumed.json()["resumed_from"] == out["steps"] and resumed.json()["steps"] == 50


# ---- bad input ----------------------------------------------------------------------------------

BAD_TOML = {
    "malformed.toml": ("steps = = 3\n", ["not valid TOML", "malformed.toml"]),
    "unknown.toml": ("stpes = 3\n", ["stpes", "did you mean 'steps'"]),
    "unknown_table.toml": ("[train]\nlearning_rate = 0.1\nscalar_lrr = 1\n", ["learning_rate"]),
    "badtype.toml": ('steps = "many"\n', ["steps", "many"]),
    "badchoice.toml": ('sides = "top"\n', ["sides", "top"]),
    "badgraft.toml": (
        'graft = "sometimes"\n',
        ["graft", "sometimes", "orthogonalizer, adam, none"],
    ),
    "renamed.toml": ('trace_norm = "yes"\n', ["trace_norm", "factor_norm"]),
    "outside_table.toml": ("steps = 5\n[train]\nlr = 0.01\n", ["'steps'", "[train]"]),
}


BAD_FLAGS = [
    (["--preset", "huge"], ["unknown preset", "huge"]),
    (["--preset", "smal"], ["did you mean 'small'"]),
    (["--alpha", "-1"], ["alpha", "-1"]),
    (["--sides", "top"], ["sides", "top", "both"]),
    (["--optimizer", "sgd"], ["optimizer", "sgd", "shampoo, soap, splus, tnt, specgd, adamw"]),
    (["--factor-norm", "off"], ["factor_norm", "'off'", "trace, same_trace, none"]),
    (["--graft", "on"], ["graft", "'on'", "orthogonalizer, adam, none"]),
    (
        ["--orthogonalizer", "svd"],
        ["orthogonalizer", "svd", "newton_schulz, exact, sign, identity, adam"],
    ),
    (["--ns", "exact"], ["'ns'", "exact", "you5", "orthogonalizer = exact"]),
    (["--momentum-style", "polyak"], ["momentum_style", "polyak", "heavy_ball, nesterov, ema"]),
    (["--optimizer", "tnt", "--fisher", "true"], ["fisher", "true", "empirical, sampled"]),
    (["--optimizer", "shampoo", "--eps", "0"], ["eps", "0", "> 0"]),
    (["--post-alpha", "-0.5"], ["post_alpha", "-0.5", ">= 0"]),
    (["--beta2", "1"], ["beta2", "1", "[0, 1)"]),
    (["--precond-start", "0"], ["precond_start", "0", ">= 1"]),
    (["--refresh-warmup", "-1"], ["refresh_warmup", "-1", ">= 0"]),
    (["--steps", "0"], ["steps"]),
    (["--batch-size", "3", "--micro-batch-size", "2"], ["multiple"]),
    (["--momentum", "1.5"], ["momentum"]),
    (["--data", "/nonexistent/corpus.txt"], ["/nonexistent/corpus.txt"]),
    (["--data", "builtin", "--val-data", "x.txt"], ["builtin"]),
    (["--resume", "auto"], ["--run-dir"]),
    (["--resume", "/nonexistent/run"], ["no checkpoint", "/nonexistent/run"]),
]


@pytest.mark.parametrize("args,needles", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_exit_2_one_line(cli, tmp_path, monkeypatch, args, needles):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli("train", *args), *needles)
    assert not (tmp_path / "runs").exists()  # nothing was started


@pytest.mark.parametrize("name", list(BAD_TOML))
def test_bad_toml_exit_2_one_line(cli, tmp_path, name):
    text, needles = BAD_TOML[name]
    conf = tmp_path / name
    conf.write_text(text)
    assert_one_line_error(cli("train", "--config", conf, "--run-dir", tmp_path / "r"), *needles)


def test_missing_config_file(cli, tmp_path):
    res = cli("train", "--config", tmp_path / "nope.toml", "--run-dir", tmp_path / "r")
    assert_one_line_error(res, "not found", "nope.toml")


def test_error_text_with_brackets_is_shown_verbatim(cli, tmp_path):
    """Paths and names in messages are user text, not Rich markup: '[/x]' neither crashes the
    error line nor disappears from it."""
    weird = tmp_path / "data[/x]" / "[bold]c.txt"
    res = cli("train", "--data", weird, "--run-dir", tmp_path / "r")
    assert_one_line_error(res, str(weird))


def test_paths_with_brackets_are_printed_not_parsed(cli, tmp_path):
    """A run dir and data path with '[...]' in them train normally and appear verbatim in the
    plain output (they are not Rich markup)."""
    data = tmp_path / "[/corpus]" / "text.txt"
    data.parent.mkdir(parents=True)
    data.write_text("def f(x):\n    return x * 2 + 1\n" * 800)
    run_dir = tmp_path / "[bold]run[/x]"
    res = cli(
        "train",
        *FAST,
        "--data",
        data,
        "--steps",
        "2",
        "--eval-every",
        "2",
        "--run-dir",
        run_dir,
        "--json",
    )
    assert res.exit_code == 0, res
    assert res.json()["status"] == "completed"
    assert f"run dir: {run_dir}" in res.stderr and str(data) in res.stderr
    assert (run_dir / "checkpoints" / "step-2").is_dir()


def test_bad_input_in_a_real_process(mousse_proc, tmp_path):
    res = mousse_proc("train", "--sides", "top", "--json", "--run-dir", tmp_path / "r")
    assert_one_line_error(res, "sides", "top")
    error = json.loads(res.stdout)  # --json: scripts read why from stdout
    assert error["exit_code"] == 2 and "sides" in error["error"]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--steps", "abc"], "--steps"),
        (["--bogus"], "--bogus"),
    ],
    ids=["steps-abc", "unknown-flag"],
)
def test_unparseable_flags_exit_2_without_traceback(cli, tmp_path, monkeypatch, args, needle):
    """Typer's own usage errors: exit 2 with the usual usage hint, never a traceback."""
    monkeypatch.chdir(tmp_path)
    res = cli("train", *args)
    assert res.exit_code == 2, res
    assert needle in res.stderr and "Traceback" not in res.stderr + res.stdout
    assert not (tmp_path / "runs").exists()
