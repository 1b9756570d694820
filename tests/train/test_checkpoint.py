"""Checkpoints: bit-exact resume, `--resume` forms, layout of the safetensors files, pruning,
refusal of corrupted or foreign checkpoints, and interrupted writes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from support.cli import (
    FAST,
    FAST_SETTINGS,
    assert_one_line_error,
    flip_tensor_bytes,
    read_metrics,
    summary,
    train_losses,
    val_losses,
)

from mousse.train import tomlio
from mousse.train.checkpoint import (
    FILES,
    FORMAT,
    CheckpointError,
    find_checkpoint,
    list_checkpoints,
    read_checkpoint,
    run_dir_of,
    verify_checksums,
)
from mousse.train.config import resolve
from mousse.train.events import CheckpointSaved
from mousse.train.model import GPT, GPTConfig
from mousse.train.optstate import flatten_optimizer
from mousse.train.resume import config_from_checkpoint
from mousse.train.trainer import Trainer

N = 6
REF_SETTINGS = {
    **FAST_SETTINGS,
    "steps": 2 * N,
    "eval_every": N,
    "checkpoint_every": N,
    "log_every": 1,
    "keep_checkpoints": 5,
    "precond_freq": 4,
}


@pytest.fixture(scope="module")
def reference(builtin_data, tmp_path_factory):
    """A 2N-step Mousse run with checkpoints at N and 2N (refreshes at steps 1, 5, 9: both halves
    use eigenbases computed before the checkpoint and after it)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    out = Trainer(resolve(REF_SETTINGS), run_dir).run()
    assert out["status"] == "completed"
    return run_dir


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def file_hashes(ckpt: Path) -> dict[str, str]:
    return {f: hashlib.sha256((ckpt / f).read_bytes()).hexdigest() for f in FILES}


# ---- exact resume ----------------------------------------------------------------------------------


def test_resume_from_step_n_is_bit_exact(cli, reference, tmp_path):
    ckpt = reference / "checkpoints" / f"step-{N}"
    new = tmp_path / "resumed"
    res = cli("train", "--resume", ckpt, "--run-dir", new, "--json")
    assert res.exit_code == 0, res
    out = res.json()
    assert out["status"] == "completed" and out["steps"] == 2 * N and out["resumed_from"] == N
    assert f"resumed at step {N}" in res.stderr

    ref_losses, new_losses = train_losses(reference), train_losses(new)
    assert sorted(new_losses) == list(range(N + 1, 2 * N + 1))
    assert new_losses == {s: ref_losses[s] for s in range(N + 1, 2 * N + 1)}  # bit-identical
    assert val_losses(new)[2 * N] == val_losses(reference)[2 * N]
    ref_summary = summary(reference)
    assert out["final_val_loss"] == ref_summary["final_val_loss"]
    assert out["best_val_loss"] == ref_summary["best_val_loss"]
    # the val-loss curve carries over from the checkpoint (steps N and 2N)
    assert [(p["step"], p["val_loss"]) for p in out["curve"]] == [
        (p["step"], p["val_loss"]) for p in ref_summary["curve"]
    ]
    # the end states agree exactly too: weights and every optimizer buffer
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = tensors(reference / "checkpoints" / f"step-{2 * N}" / name)
        b = tensors(new / "checkpoints" / f"step-{2 * N}" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    # the source run is untouched
    assert [p.name for p in list_checkpoints(reference / "checkpoints")] == [
        f"step-{N}",
        f"step-{2 * N}",
    ]


def test_resume_auto_and_longer_runs_continue(cli, tmp_path):
    run_dir = tmp_path / "run"
    res = cli(
        "train",
        *FAST,
        "--steps",
        "6",
        "--log-every",
        "1",
        "--eval-every",
        "3",
        "--run-dir",
        run_dir,
        "--json",
    )
    assert res.exit_code == 0, res
    first = train_losses(run_dir)

    res = cli("train", "--resume", "auto", "--run-dir", run_dir, "--steps", "9", "--json")
    assert res.exit_code == 0, res
    out = res.json()
    assert out["status"] == "completed" and out["steps"] == 9 and out["resumed_from"] == 6
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, 10))  # one line per step, none repeated
    assert {s: losses[s] for s in first} == first
    assert tomlio.load(run_dir / "config.toml")["steps"] == 9
    assert (run_dir / "checkpoints" / "step-9").is_dir()

    # --resume RUN_DIR without --run-dir continues in that run dir, from its latest checkpoint
    res = cli("train", "--resume", run_dir, "--steps", "11", "--json")
    assert res.exit_code == 0, res
    out = res.json()
    assert Path(out["run_dir"]) == run_dir and out["resumed_from"] == 9 and out["steps"] == 11
    assert sorted(train_losses(run_dir)) == list(range(1, 12))
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step-9", "step-11"]


# ---- layout ------------------------------------------------------------------------------------------


def test_checkpoint_files_and_names(reference):
    ckpt = reference / "checkpoints" / f"step-{2 * N}"
    assert sorted(p.name for p in ckpt.iterdir()) == sorted([*FILES, "checksums.json"])
    cfg = resolve(REF_SETTINGS)
    model = GPT(
        GPTConfig(
            vocab_size=256,
            d_model=cfg.d_model,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            head_dim=cfg.head_dim,
            seq_len=cfg.seq_len,
        )
    )
    params = dict(model.named_parameters())
    roles = model.param_roles()

    weights = tensors(ckpt / "model.safetensors")
    assert weights.keys() == model.state_dict().keys()

    opt = tensors(ckpt / "optimizer.safetensors")
    pattern = re.compile(r"^(matrix|scalar)\.state\.(.+)\.([A-Za-z_]+)$")
    by_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in opt.items():
        m = pattern.match(key)
        assert m, key
        part, name, buffer = m.groups()
        assert name in params, key
        assert part == ("matrix" if roles[name] == "matrix" else "scalar"), key
        by_param.setdefault(name, {})[buffer] = value
    assert by_param.keys() == params.keys()  # every parameter has its state saved
    for name, buffers in by_param.items():
        m, n = params[name].shape
        if roles[name] == "matrix":
            for key, shape in (
                ("L", (m, m)),
                ("Q_L", (m, m)),
                ("lam_L", (m,)),
                ("R", (n, n)),
                ("Q_R", (n, n)),
                ("lam_R", (n,)),
                ("momentum_buffer", (m, n)),
            ):
                assert buffers[key].dtype == torch.float32, (name, key)
                assert tuple(buffers[key].shape) == shape, (name, key)
            assert int(buffers["step"]) == 2 * N
            # after refreshes, Q_L is an orthogonal eigenbasis, not the identity it starts as
            q = buffers["Q_L"]
            assert torch.allclose(q.T @ q, torch.eye(m), atol=1e-4)
            assert not torch.equal(q, torch.eye(m))
        else:
            assert {"exp_avg", "exp_avg_sq", "step"} <= buffers.keys(), name

    with safe_open(ckpt / "optimizer.safetensors", framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == FORMAT and meta["step"] == str(2 * N)
    groups = json.loads(meta["param_groups"])
    assert set(groups) == {"matrix", "scalar"}
    assert sorted(n for g in groups["matrix"] for n in g["params"]) == sorted(
        n for n, r in roles.items() if r == "matrix"
    )

    with safe_open(ckpt / "trainer.safetensors", framework="pt") as fh:
        meta = fh.metadata()
        names = fh.keys()
    assert "rng_cpu" in names
    saved_cfg = tomlio.loads(json.loads(meta["config"]))
    assert saved_cfg == tomlio.load(reference / "config.toml")
    assert json.loads(meta["step"]) == 2 * N


def test_keep_checkpoints_prunes_old_ones(builtin_data, tmp_path):
    saved = []
    settings = {
        **FAST_SETTINGS,
        "steps": 6,
        "eval_every": 6,
        "checkpoint_every": 2,
        "keep_checkpoints": 1,
    }
    out = Trainer(
        resolve(settings),
        tmp_path / "r",
        on_event=lambda e: saved.append(e.step) if isinstance(e, CheckpointSaved) else None,
    ).run()
    assert out["status"] == "completed"
    assert saved == [2, 4, 6]
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["step-6"]


def test_kill_while_pruning_leaves_no_half_deleted_checkpoint(builtin_data, tmp_path, monkeypatch):
    """A process killed while deleting an old checkpoint leaves only a hidden temp dir, never a
    `step-N` missing files (which resuming refuses)."""
    import mousse.train.checkpoint as ckpt_module

    real_rmtree = shutil.rmtree

    def killed_rmtree(path, ignore_errors=False):
        if "step-2" not in Path(path).name:
            return real_rmtree(path, ignore_errors=ignore_errors)
        next(p for p in sorted(Path(path).iterdir()) if p.is_file()).unlink()
        raise KeyboardInterrupt  # stands in for SIGKILL: the delete stops half done

    settings = {**FAST_SETTINGS, "steps": 4, "eval_every": 4, "checkpoint_every": 2}
    settings["keep_checkpoints"] = 1
    run_dir = tmp_path / "r"
    monkeypatch.setattr(ckpt_module.shutil, "rmtree", killed_rmtree)
    with pytest.raises(KeyboardInterrupt):
        Trainer(resolve(settings), run_dir).run()
    monkeypatch.setattr(ckpt_module.shutil, "rmtree", real_rmtree)
    root = run_dir / "checkpoints"
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == ["step-4"]
    assert find_checkpoint(run_dir) == root / "step-4"
    assert sorted(p.name for p in root.iterdir())[0].startswith(".step-2-old-")


# ---- refused checkpoints ----------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _foreign(path: Path) -> None:  # valid safetensors, but not written by mousse
    save_file({"x": torch.zeros(2)}, path)


def _as_older_format(ckpt: Path) -> None:
    """Rewrite a checkpoint as versions before checksums wrote it: no checksums.json, and no
    file's metadata saying that one was written."""
    (ckpt / "checksums.json").unlink()
    for name in FILES:
        with safe_open(ckpt / name, framework="pt") as fh:
            tensors = load_file(ckpt / name)
            meta = {k: v for k, v in (fh.metadata() or {}).items() if k != "checksums"}
        save_file(tensors, ckpt / name, metadata=meta)


@pytest.mark.parametrize(
    "file,damage,needle",
    [
        ("model.safetensors", _truncate, "truncated"),
        ("optimizer.safetensors", _garble_header, "unreadable"),
        ("trainer.safetensors", _empty, "unreadable"),
        ("model.safetensors", _foreign, "not a mousse checkpoint"),
    ],
    ids=["truncated-model", "garbled-optimizer", "empty-trainer", "foreign-model"],
)
@pytest.mark.parametrize("checksums", [True, False], ids=["checksummed", "older-format"])
def test_damaged_checkpoint_is_refused(cli, reference, tmp_path, file, damage, needle, checksums):
    """The checksums written with a checkpoint name the damaged file; a checkpoint from before
    checksums is still refused by the reader."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "checkpoints" / f"step-{N}", ckpt)
    if not checksums:
        _as_older_format(ckpt)
    damage(ckpt / file)
    res = cli("train", "--resume", ckpt, "--run-dir", tmp_path / "new")
    assert_one_line_error(res, str(ckpt / file), "is damaged" if checksums else needle)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("file", ["model.safetensors", "checksums.json"])
def test_checksums_that_leave_a_file_out_verify_nothing_of_it(cli, reference, tmp_path, file):
    """A checksums.json of {}, or one without model.safetensors's entry, beside a flipped byte
    in that file: the file it leaves out is not taken as verified."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "checkpoints" / f"step-{N}", ckpt)
    sums = json.loads((ckpt / "checksums.json").read_text())
    del sums["model.safetensors"]
    (ckpt / "checksums.json").write_text("{}" if file == "checksums.json" else json.dumps(sums))
    flip_tensor_bytes(ckpt / "model.safetensors")
    res = cli("train", "--resume", ckpt, "--run-dir", tmp_path / "new")
    assert_one_line_error(res, f"{ckpt / 'model.safetensors'} is not covered by")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("entry", ["absolute", "/dev/null", "../outside.bin", "link"])
def test_checksums_hash_only_files_inside_the_checkpoint(reference, tmp_path, entry):
    """An entry naming a file elsewhere (a path, a device, a link out of the dir) is refused,
    never opened, even when its checksum would match."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "checkpoints" / f"step-{N}", ckpt)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not the checkpoint's")
    name = {"absolute": str(outside), "link": "link"}.get(entry, entry)
    if entry == "link":
        (ckpt / "link").symlink_to(outside)
    sums = json.loads((ckpt / "checksums.json").read_text())
    sums[name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    (ckpt / "checksums.json").write_text(json.dumps(sums))
    with pytest.raises(CheckpointError, match="which is not a file of the checkpoint"):
        verify_checksums(ckpt)


def test_a_checkpoints_run_dir_is_the_one_whose_checkpoints_dir_holds_it(tmp_path, monkeypatch):
    assert run_dir_of(Path("R/checkpoints/step-6")) == Path("R")
    assert run_dir_of(Path("R/checkpoints/abandoned/step-6-20261207-101500")) is None
    assert run_dir_of(Path("backup/step-6")) is None
    (tmp_path / "R" / "checkpoints").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "R" / "checkpoints")
    assert run_dir_of(Path("step-6")).resolve() == (tmp_path / "R").resolve()


def test_incomplete_checkpoint_dir_is_not_a_checkpoint(cli, reference, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference / "checkpoints" / f"step-{N}", ckpt)
    (ckpt / "optimizer.safetensors").unlink()
    assert_one_line_error(
        cli("train", "--resume", ckpt, "--run-dir", tmp_path / "new"),
        f"{ckpt} is missing optimizer.safetensors",
    )


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--preset", "small"], "preset"),
        (["--d-model", "32"], "d_model"),
        (["--n-layers", "1"], "n_layers"),
        (["--optimizer", "muon"], "optimizer"),
    ],
    ids=["preset", "d_model", "n_layers", "optimizer"],
)
def test_checkpoint_of_another_shape_is_refused(cli, reference, tmp_path, flags, needle):
    res = cli("train", "--resume", reference, *flags, "--run-dir", tmp_path / "new")
    assert_one_line_error(res, needle)


def test_checkpoint_on_other_data_is_refused(cli, reference, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("x = [i * i for i in range(10)]\n" * 1000)
    res = cli("train", "--resume", reference, "--data", text, "--run-dir", tmp_path / "new")
    assert_one_line_error(res, "other data")


# ---- interrupted writes -------------------------------------------------------------------------


def test_interrupted_checkpoint_write_keeps_previous_one(cli, builtin_data, tmp_path, monkeypatch):
    import mousse.train.checkpoint as ckpt_module

    settings = {**FAST_SETTINGS, "steps": 8, "eval_every": 4, "checkpoint_every": 4, "log_every": 1}
    run_dir = tmp_path / "run"
    real_save = ckpt_module.save_file
    hashes = {}

    def failing_save(tensors, filename, metadata=None):
        if ".step-8-" in str(filename) and Path(filename).name == "optimizer.safetensors":
            Path(filename).write_bytes(b"partial")  # half-written, then the write fails
            raise OSError(28, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    def on_event(event):
        if isinstance(event, CheckpointSaved):
            hashes[event.step] = file_hashes(event.path)

    monkeypatch.setattr(ckpt_module, "save_file", failing_save)
    with pytest.raises(CheckpointError, match=r"No space left.*earlier checkpoints .* are intact"):
        Trainer(resolve(settings), run_dir, on_event=on_event).run()
    monkeypatch.setattr(ckpt_module, "save_file", real_save)

    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-4"]  # no step-8, no temp dir left
    assert file_hashes(root / "step-4") == hashes[4]  # the previous checkpoint is intact
    read_checkpoint(root / "step-4")

    # a hard kill mid-write leaves a temp dir, which is not counted
    (root / ".step-8-abc123").mkdir()
    (root / ".step-8-abc123" / "model.safetensors").write_bytes(b"partial")
    assert list_checkpoints(root) == [root / "step-4"]
    assert find_checkpoint(run_dir) == root / "step-4"

    # resuming picks step 4 and reproduces an uninterrupted run exactly
    res = cli("train", "--resume", "auto", "--run-dir", run_dir, "--json")
    assert res.exit_code == 0, res
    assert res.json()["resumed_from"] == 4 and res.json()["status"] == "completed"
    clean = Trainer(resolve(settings), tmp_path / "clean").run()
    assert train_losses(run_dir) == train_losses(tmp_path / "clean")
    # what was logged after step 4 before the crash was dropped, not duplicated
    assert [r["step"] for r in read_metrics(run_dir) if "train_loss" in r] == list(range(1, 9))
    evals = [r["step"] for r in read_metrics(run_dir) if "val_loss" in r]
    assert evals == [r["step"] for r in read_metrics(tmp_path / "clean") if "val_loss" in r]
    assert evals == [0, 4, 7, 8]  # step 0, every 4th, and the dense last quarter
    assert summary(run_dir)["final_val_loss"] == clean["final_val_loss"]
    assert "step-8" in [p.name for p in list_checkpoints(root)]
    read_checkpoint(root / "step-8")


# ---- checkpoints of earlier mousse -----------------------------------------------------------------

# Step 2 of a 4-step run (d_model 8, one layer, precond_freq 3) written by mousse at commit
# 1733ff0, whose optimizer's state_dict was {'matrix': ..., 'scalar': ...}; the files' layout
# (`<part>.state.<param>.<buffer>`) is what checkpoints still hold.
EARLIER = Path(__file__).parent / "data" / "mousse-1733ff0" / "step-2"


def test_a_checkpoint_of_earlier_mousse_resumes_with_every_buffer(tmp_path):
    ckpt = shutil.copytree(EARLIER, tmp_path / "step-2")  # the repository's copy stays as it is
    cfg, _ = config_from_checkpoint(ckpt, {})
    trainer = Trainer(cfg, tmp_path / "resumed", resume=ckpt)
    assert trainer.resumed_from == 2
    saved = load_file(ckpt / "optimizer.safetensors")
    restored, meta = flatten_optimizer(trainer.opt)
    assert restored.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(restored[key], value) and restored[key].dtype == value.dtype, key
    with safe_open(ckpt / "optimizer.safetensors", "pt") as fh:
        earlier = json.loads(fh.metadata()["param_groups"])
    for rule, groups in json.loads(meta["param_groups"]).items():  # the same groups, and knobs
        assert [g["params"] for g in groups] == [g["params"] for g in earlier[rule]]
        for group, was in zip(groups, earlier[rule], strict=True):
            assert {k: group[k] for k in was} == was
    out = trainer.run()
    assert out["status"] == "completed" and out["steps"] == 4


def test_a_gpt2_checkpoint_of_before_conv1d_orientation_is_refused(cli, tmp_path):
    """Earlier mousse optimized GPT-2's Conv1D weights as stored, (in, out): its optimizer state
    holds the transposed matrices' buffers and cannot be continued; one line, nothing written."""
    pytest.importorskip("transformers")
    from support.usermodel import FAST as MODEL_FAST

    run = tmp_path / "run"
    model = ["--model", "hf:gpt2", "--model-config", "n_embd=32,n_layer=1,n_head=2"]
    steps = ["--steps", "2", "--checkpoint-every", "2", "--eval-every", "2"]
    assert cli("train", *model, *MODEL_FAST, *steps, "--run-dir", run).exit_code == 0
    ckpt = run / "checkpoints" / "step-2"
    _as_older_format(ckpt)
    path = ckpt / "optimizer.safetensors"
    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata() or {}
    groups = json.loads(meta["param_groups"])
    assert [g.pop("transposed") for g in groups["matrix"]] == [True]  # as earlier mousse wrote
    save_file(load_file(path), path, metadata={**meta, "param_groups": json.dumps(groups)})
    res = cli("train", "--resume", ckpt, "--steps", "4", "--run-dir", tmp_path / "new")
    assert_one_line_error(res, str(ckpt), "other orientation", "start the run afresh")
    assert not (tmp_path / "new").exists()


DEC_2026_RUN = Path(__file__).parents[1] / "fixtures" / "format-2026-12" / "run"


@pytest.mark.parametrize(
    "key,value", [("step", '"4"'), ("curve", '[{"step": 4}]'), ("compiled", '"yes"')]
)
def test_checkpoint_metadata_of_another_shape_is_a_checkpoint_error(key, value):
    """Trainer metadata whose value is not of the type the trainer writes (`CheckpointMeta`) is
    refused when read, naming the fix, not taken in to fail later."""
    from mousse.train.resume import trainer_meta

    loaded = read_checkpoint(DEC_2026_RUN / "checkpoints" / "step-4")
    loaded["trainer_meta"] = {**loaded["trainer_meta"], key: value}
    with pytest.raises(CheckpointError, match=r"another type.*resume from an earlier checkpoint"):
        trainer_meta(loaded)


@pytest.mark.parametrize(
    "name,edit",
    [
        ("metrics.jsonl", lambda text: text.replace('"lr": 0.12', '"lr": "high"', 1)),
        ("env.json", lambda text: text.replace('"seed": 0', '"seed": "zero"')),
        ("env.json", lambda text: text.replace('"seed": 0,', "")),
    ],
    ids=["metrics-str-lr", "env-str-seed", "env-no-seed"],
)
def test_run_logs_of_another_shape_are_refused_on_resume(tmp_path, name, edit):
    """A metrics.jsonl line or an env.json of another shape than the trainer writes is a
    RunDirError naming the file, read before a resume writes anything."""
    from mousse.train.rundir import RunDirError, earlier_logs

    run = Path(shutil.copytree(DEC_2026_RUN, tmp_path / "run"))
    path = run / name
    path.write_text(edit(path.read_text()))
    with pytest.raises(RunDirError, match=f"{re.escape(str(path))}.*another type"):
        earlier_logs(run)


def test_a_loss_that_was_not_finite_reads_back_as_none(tmp_path):
    """Strict JSON writes a non-finite loss as null; such a line is a run's record, not damage."""
    from mousse.train.rundir import earlier_logs

    run = Path(shutil.copytree(DEC_2026_RUN, tmp_path / "run"))
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    step = next(i for i, line in enumerate(lines) if '"train_loss"' in line)
    lines[step] = re.sub(r'"train_loss": [^,}]+', '"train_loss": null', lines[step])
    path.write_text("\n".join(lines) + "\n")
    _, records = earlier_logs(run)
    assert sum(r.get("train_loss", 0) is None for r in records) == 1


def test_an_optimizer_index_of_another_shape_is_a_checkpoint_error(tmp_path):
    """A sharded checkpoint's index whose shards are not a list of file names is refused as
    unreadable optimizer state, not read letter by letter as file names."""
    from mousse.train.optstate import OPTIMIZER_INDEX, optimizer_files

    (tmp_path / OPTIMIZER_INDEX).write_text('{"shards": "abc"}')
    with pytest.raises(CheckpointError, match="no readable optimizer state"):
        optimizer_files(tmp_path)


def test_a_lock_file_that_does_not_say_who_holds_it_names_another_process(tmp_path):
    """The lock file's holder is named only when it has the shape RunLock writes."""
    from mousse.train.rundir import LOCK_FILE, RunLock, held_by

    with RunLock(tmp_path).acquire():
        assert held_by(tmp_path).startswith(f"pid {os.getpid()} on ")
        (tmp_path / LOCK_FILE).write_text('{"pid": "1; rm -rf", "host": 2, "since": null}')
        assert held_by(tmp_path) == "another process"
