"""Distributed training on torch.distributed (gloo, CPU): real 2-rank jobs started by torchrun,
compared with one process on the same global batch; ownership planning; per-rank checkpoints and
resuming across world sizes; a failing rank ending the job.

The multi-process jobs share one reference run (module fixture); the file takes about 40 s on two
cores, most of it process start-up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.cli import assert_one_line_error, mousse_command, read_metrics
from support.gloo import run_gloo_ranks

from mousse.distributed.ownership import OwnerLayout, matrix_cost, plan_loads, plan_ownership
from mousse.distributed.process import batch_split
from mousse.optim.routing import build_optimizer, routed_shapes
from mousse.train.checkpoint import list_checkpoints, save_checkpoint
from mousse.train.config import ConfigError, resolve
from mousse.train.model import GPT, GPTConfig
from mousse.train.optstate import OPTIMIZER_INDEX, optimizer_state_by_name
from mousse.train.presets import PRESETS, meta_model
from mousse.train.trainer import Trainer

ARGS = [
    "--d-model",
    "64",
    "--seq-len",
    "64",
    "--batch-size",
    "4",
    "--micro-batch-size",
    "2",
    "--eval-tokens",
    "4096",
    "--steps",
    "20",
    "--log-every",
    "1",
    "--eval-every",
    "10",
    "--checkpoint-every",
    "10",
]
SETTINGS = {
    "d_model": 64,
    "seq_len": 64,
    "batch_size": 4,
    "micro_batch_size": 2,
    "eval_tokens": 4096,
    "steps": 20,
    "log_every": 1,
    "eval_every": 10,
    "checkpoint_every": 10,
}
RTOL = 1e-5


def _env(**extra) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
    }
    return {**env, **extra}


def torchrun(*args, nproc: int = 2, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m mousse_cli ARGS`, the way users launch it."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mousse_cli",
        *map(str, args),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(**env))


def mousse(*args, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*mousse_command(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
    )


def metrics(run_dir: Path) -> dict[tuple[str, int], float]:
    out = {}
    for r in read_metrics(run_dir):
        for key in ("train_loss", "val_loss"):
            if key in r:
                out[(key, r["step"])] = r[key]
    return out


def assert_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    worst = max(abs(got[k] - want[k]) / abs(want[k]) for k in want)
    assert worst <= RTOL, f"largest relative difference {worst:.3g}"


def shard_index(ckpt: Path) -> dict:
    """The index a sharded checkpoint writes beside its shards (optimizer-index.json)."""
    return json.loads((ckpt / OPTIMIZER_INDEX).read_text())


def state_bytes(path: Path) -> int:
    return sum(t.numel() * t.element_size() for t in load_file(path).values())


def resumable_copy(src: Path, dst: Path) -> Path:
    """A copy of a finished run dir with only its step-10 checkpoint left."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / "step-20")
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory, builtin_data):
    """The same 20 steps in one process (in-process Trainer) and on 2 ranks (torchrun)."""
    root = tmp_path_factory.mktemp("dist")
    single = Trainer(resolve(SETTINGS), root / "single").run()
    t0 = time.perf_counter()
    res = torchrun("train", *ARGS, "--run-dir", root / "two", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    return {
        "root": root,
        "single": single,
        "two": json.loads(res.stdout),
        "two_stderr": res.stderr,
        "two_seconds": time.perf_counter() - t0,
    }


# ---- the equality of 2 ranks and 1 process --------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_match_one_process(runs):
    root = runs["root"]
    assert runs["two"]["status"] == "completed" and runs["two"]["world_size"] == 2
    assert runs["single"]["world_size"] == 1
    assert_close(metrics(root / "two"), metrics(root / "single"))  # train and val losses
    assert runs["two"]["final_val_loss"] == pytest.approx(
        runs["single"]["final_val_loss"], rel=RTOL
    )


@pytest.mark.slow
def test_only_rank_0_renders_and_writes(runs):
    root, err = runs["root"], runs["two_stderr"]
    assert err.count("step 20/20") == 1 and err.count("run dir:") == 1  # one view, rank 0's
    assert "Traceback" not in err
    assert sorted(p.name for p in (root / "two").iterdir()) == sorted(
        [".lock", "checkpoints", "config.toml", "env.json", "metrics.jsonl", "summary.json"]
    )
    ckpt = root / "two" / "checkpoints" / "step-20"
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        [
            "model.safetensors",
            "trainer.safetensors",
            "optimizer-index.json",
            "checksums.json",
            "optimizer-rank0.safetensors",
            "optimizer-rank1.safetensors",
        ]
    )
    assert [p.name for p in list_checkpoints(root / "two" / "checkpoints")] == [
        "step-10",
        "step-20",
    ]
    assert not [p for p in (root / "two" / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_optimizer_state_per_rank_is_about_half(runs):
    root = runs["root"]
    whole = state_bytes(root / "single" / "checkpoints" / "step-20" / "optimizer.safetensors")
    index = shard_index(root / "two" / "checkpoints" / "step-20")
    assert index["world_size"] == 2 and sorted(set(index["owners"].values())) == [0, 1]
    per_rank = index["state_bytes"]  # in memory, replicated embedding/head state included
    assert all(0.4 * whole <= b <= 0.6 * whole for b in per_rank), (per_rank, whole)
    # every parameter's state is saved exactly once, by its owner (replicated ones by rank 0)
    shards = [state_bytes(root / "two" / "checkpoints" / "step-20" / s) for s in index["shards"]]
    assert sum(shards) == whole


# ---- resuming across world sizes ----------------------------------------------------------------


@pytest.mark.slow
def test_resume_two_ranks_checkpoint_on_one_process(runs):
    root = runs["root"]
    run_dir = resumable_copy(root / "two", root / "two-then-one")
    out = Trainer(resolve(SETTINGS), run_dir, resume=run_dir).run()
    assert out["resumed_from"] == 10 and out["steps"] == 20 and out["world_size"] == 1
    assert_close(metrics(run_dir), metrics(root / "single"))


@pytest.mark.slow
def test_resume_one_process_checkpoint_on_two_ranks(runs):
    root = runs["root"]
    run_dir = resumable_copy(root / "single", root / "one-then-two")
    res = mousse("train", "--resume", run_dir, "--nproc", "2", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["resumed_from"] == 10 and out["steps"] == 20 and out["world_size"] == 2
    assert_close(metrics(run_dir), metrics(root / "single"))
    assert shard_index(run_dir / "checkpoints" / "step-20")["world_size"] == 2


# ---- failures -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_promptly(builtin_data, tmp_path):
    """100,000 steps planned, a rank failing at step 3: the job ends (the subprocess timeout
    fails the test if the other rank were left waiting in a collective)."""
    res = mousse(
        "train",
        *ARGS,
        "--steps",
        "100000",
        "--run-dir",
        tmp_path / "r",
        "--nproc",
        "2",
        MOUSSE_FAIL_AT="1:3",
        timeout=90,
    )
    assert res.returncode == 1, res.stderr[-3000:]
    lines = res.stderr.splitlines()
    assert any(
        line.startswith("error: rank 1/2: RuntimeError: injected failure at step 3")
        for line in lines
    ), res.stderr
    assert lines[-1] == "error: rank 1 ended with exit code 1; torchrun stopped the other ranks"
    assert "Traceback" not in res.stderr
    assert not list_checkpoints(tmp_path / "r" / "checkpoints")


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux: /proc)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []
    return [d for c in map(int, children) for d in (c, *_descendants(c))]


@pytest.mark.slow
def test_sigterm_to_the_launcher_reaches_torchrun_and_every_rank(builtin_data, tmp_path):
    """`kill PID` of `mousse train --nproc 2` (only the launcher is signalled): the ranks
    checkpoint and stop, nothing is left running, and the launcher exits 143 after them."""
    run = tmp_path / "r"
    proc = subprocess.Popen(
        [
            *mousse_command(),
            "train",
            *ARGS,
            *("--steps", "100000", "--run-dir", str(run)),
            *("--nproc", "2", "--checkpoint-every", "100000"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + 120
    while (
        not (run / "metrics.jsonl").exists() or '"step"' not in (run / "metrics.jsonl").read_text()
    ):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        time.sleep(0.2)
    below = _descendants(proc.pid)
    assert len(below) >= 3  # torchrun and its two ranks
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert not [pid for pid in below if Path(f"/proc/{pid}").exists()], "left running"
    done = json.loads((run / "summary.json").read_text())
    assert done["status"] == "interrupted" and done["steps"] < 100000
    assert list_checkpoints(run / "checkpoints")[-1].name == f"step-{done['steps']}"


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie awaiting its reaper is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
def test_kill_9_of_the_launcher_stops_torchrun_and_every_rank(builtin_data, tmp_path):
    """kill -9 of `mousse train --nproc 2` (nothing can be passed on): torchrun gets SIGTERM
    from the kernel as its parent dies, the ranks checkpoint and stop, and the launch's temp
    folder is removed."""
    run, tmp = tmp_path / "r", tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen(
        [
            *mousse_command(),
            "train",
            *ARGS,
            *("--steps", "100000", "--run-dir", str(run)),
            *("--nproc", "2", "--checkpoint-every", "100000"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(TMPDIR=str(tmp)),
    )
    deadline = time.monotonic() + 120
    while (
        not (run / "metrics.jsonl").exists() or '"step"' not in (run / "metrics.jsonl").read_text()
    ):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    below = _descendants(proc.pid)
    assert len(below) >= 3 and list(tmp.glob("mousse-launch-*"))  # torchrun, 2 ranks, settings
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 120
    while any(map(_running, below)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in below if _running(pid)], "left running"
    assert not list(tmp.glob("mousse-launch-*"))
    done = json.loads((run / "summary.json").read_text())
    assert done["status"] == "interrupted" and done["steps"] < 100000
    assert list_checkpoints(run / "checkpoints")[-1].name == f"step-{done['steps']}"


def test_bad_batch_split_is_one_line_before_launching(cli, tmp_path):
    res = cli(
        "train",
        "--nproc",
        "3",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--run-dir",
        tmp_path / "r",
    )
    assert_one_line_error(res, "batch_size 4", "3 ranks")
    assert not (tmp_path / "r").exists()


# ---- ablate under torchrun, bf16 all-gather ---------------------------------------------------------


@pytest.mark.slow
def test_ablate_under_torchrun_with_bf16_gather(runs):
    root = runs["root"]
    res = torchrun(
        "ablate",
        "--alpha",
        "0.125,0.0",
        "--no-baseline",
        *ARGS,
        "--gather-dtype",
        "bf16",
        "--ablation-dir",
        root / "ablate",
        "--json",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads(res.stdout)  # one JSON object: rank 0's
    assert (root / "ablate" / "results.json").is_file()
    rows = {r["name"]: r for r in results["runs"]}
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows.values())
    # bf16 updates: close to, not equal to, the fp32 run; the checkpoint's cross-rank weight
    # check passed (it fails the run when the replicas disagree)
    default = next(r for r in rows.values() if r["knobs"].get("alpha", 0.125) == 0.125)
    assert default["final_val_loss"] == pytest.approx(runs["single"]["final_val_loss"], rel=2e-2)


# ---- planning and the pieces, in process ------------------------------------------------------------


def preset_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return routed_shapes(meta_model(PRESETS[name]))


@pytest.mark.parametrize("preset,world", [("160m", 8), ("800m", 64), ("tiny", 2), ("tiny", 13)])
def test_plan_ownership_is_balanced_contiguous_and_deterministic(preset, world):
    shapes = preset_shapes(preset)
    cost = lambda s: matrix_cost(s).amortized
    owners = plan_ownership(shapes, world, cost)
    assert owners == plan_ownership(dict(shapes), world, cost)  # deterministic
    assert list(owners) == list(shapes) and set(owners.values()) <= set(range(world))
    loads = plan_loads(shapes, owners, world, cost)
    best = max(sum(loads) / world, max(cost(s) for s in shapes.values()))
    assert max(loads) <= 4 / 3 * best + 1e-6 * best  # LPT's bound
    by_shape: dict[tuple, list[int]] = {}
    for name, shape in shapes.items():
        by_shape.setdefault(shape, []).append(owners[name])
    for ranks in by_shape.values():  # one contiguous chunk per rank and shape
        assert ranks == sorted(ranks)
    assert plan_ownership(shapes, 1) == dict.fromkeys(shapes, 0)


def test_a_convolution_weight_costs_as_its_flattened_matrix():
    conv, flat = (64, 3, 3, 3), (64, 27)
    assert matrix_cost(conv) == matrix_cost(flat)
    owners = plan_ownership({"conv": conv, "fc": (256, 64), "head": (10, 256)}, 2)
    assert set(owners.values()) == {0, 1}


def test_owner_layout_packs_each_rank_in_its_slot():
    owners = {"a": 1, "b": 0, "c": 1}
    layout = OwnerLayout(["a", "b", "c"], {"a": 2, "b": 3, "c": 1}, owners, 2)
    assert layout.width == 3 and list(layout.slots(1)) == [("a", 0, 2), ("c", 2, 1)]
    slot = torch.full((3,), 7.0)
    layout.pack(slot, 1, {"a": torch.tensor([1.0, 2.0]), "c": None})
    assert slot.tolist() == [1.0, 2.0, 0.0]


def test_batch_split():
    assert batch_split(16, 16, 2) == (8, 8) and batch_split(16, 4, 2) == (8, 4)
    with pytest.raises(ConfigError, match="3 ranks"):
        batch_split(16, 4, 3)
    assert batch_split(12, 3, 2) == (6, 3)
    with pytest.raises(ConfigError, match="micro_batch_size 4"):
        batch_split(12, 4, 2)


def test_optimizer_state_moves_by_name_between_ownerships(tmp_path):
    """A full optimizer's checkpoint loads into per-rank optimizers over halves of the matrices
    (and back): each gets exactly its parameters' state."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, head_dim=8, seq_len=8))
    opt, _ = build_optimizer(model, lr=0.02)
    x = torch.randint(0, 32, (2, 8))
    for _ in range(3):
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
    ckpt = save_checkpoint(tmp_path, 3, model, opt, {"x": torch.zeros(1)}, {}, keep=1)
    shapes = routed_shapes(model)
    owners = plan_ownership(shapes, 2)
    full = matrix_state(opt)
    for rank in (0, 1):
        mine = {n for n, r in owners.items() if r == rank}
        part, _ = build_optimizer(model, lr=0.02, owned=mine)
        part.load_state_dict(optimizer_state_by_name(part, ckpt))
        got = matrix_state(part)
        assert set(got) == mine
        for name in mine:
            for key, value in full[name].items():
                assert torch.equal(got[name][key], value), (name, key)
        assert torch.equal(
            part.state[model.embed.weight]["exp_avg"], opt.state[model.embed.weight]["exp_avg"]
        )


def matrix_state(opt) -> dict[str, dict]:
    """The state of the block matrices an optimizer steps, by parameter name."""
    return {
        opt.param_names[id(p)]: opt.state[p]
        for g in opt.param_groups
        if g["rule"] == "matrix"
        for p in g["params"]
    }


def test_scaling_doc_tables_match_the_script():
    """docs/scaling.md shows what scripts/scaling.py computes from the presets (rerun the script
    and paste its output between the markers when shapes or the plan change)."""
    import runpy

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "scaling.md").read_text()
    start, end = "<!-- scripts/scaling.py -->\n", "<!-- /scripts/scaling.py -->"
    shown = doc[doc.index(start) + len(start) : doc.index(end)]
    assert shown == runpy.run_path(str(root / "scripts" / "scaling.py"))["tables"]()


# ---- the gradient exchange with missing gradients (2 spawned gloo processes) --------------------


def _missing_grads_worker(rank: int) -> None:
    """One rank: some gradients missing on one rank or on all; the exchange and the step must
    finish (no hang), give owners the summed gradients, keep None where no rank had one, and
    leave both replicas with the same weights."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from mousse.distributed.rank import Dist
    from mousse.distributed.sharded import weights_digest

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, head_dim=4, seq_len=8))
    cfg = SimpleNamespace(
        batch_size=2,
        micro_batch_size=1,
        optimizer="mousse",
        sides="both",
        precond_freq=1,
        ns_steps=5,
        gather_dtype="fp32",
    )
    d = Dist(rank, 2)
    owned = d.prepare(model, cfg)
    opt, _ = build_optimizer(model, lr=0.02, owned=owned)
    x = torch.randint(0, 16, (1, 8), generator=torch.Generator().manual_seed(rank))
    model(x, x)[1].backward()
    params = dict(model.named_parameters())
    if rank == 0:  # missing on one rank only
        params["blocks.0.attn.q.weight"].grad = None
        params["embed.weight"].grad = None
    params["blocks.0.mlp.fc.weight"].grad = None  # missing on every rank
    expected = {}
    for name, p in params.items():  # the sums, None counting as zeros
        g = p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(g)
        expected[name] = g
    loss = d.reduce_gradients(torch.tensor(float(rank + 1)), step=1)
    assert loss.item() == 3.0
    for name, p in params.items():
        mine = d.owners.get(name, rank) == rank
        if name == "blocks.0.mlp.fc.weight" or not mine:
            assert p.grad is None, name
        else:
            assert torch.equal(p.grad, expected[name]), name
    d.optimizer_step(opt)
    digests = [None, None]
    dist.all_gather_object(digests, weights_digest(model))
    assert digests[0] == digests[1]


@pytest.mark.slow
@pytest.mark.parametrize("repeat", [1, 2])  # teardown-sensitive: a cheap repeat in every CI run
def test_missing_gradients_neither_hang_nor_leak(tmp_path, repeat):
    run_gloo_ranks(_missing_grads_worker, 2, tmp_path)


# ---- torch.distributed.checkpoint over ranks that own different matrices ----------------------------


def _dcp_worker(rank: int, root: str) -> None:
    """One rank of 2: its optimizer over the matrices it owns (as under `mousse train --nproc`),
    3 steps, each matrix's new value sent from its owner so the replicas agree, then its state
    (flattened by parameter, as DCP reshards) saved with torch.distributed.checkpoint and, for
    the comparison, by name in a plain file."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    model = tiny_model()
    owners = plan_ownership(routed_shapes(model), 2)
    opt, _ = build_optimizer(model, lr=0.02, owned={n for n, r in owners.items() if r == rank})
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randint(0, 32, (2, 8), generator=g)
        opt.zero_grad()
        model(x, x)[1].backward()
        opt.step()
        for name, p in model.named_parameters():
            if name in owners:
                dist.broadcast(p.data, src=owners[name])
    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    dcp.save(get_optimizer_state_dict(model, opt, options=flat), checkpoint_id=f"{root}/dcp")
    mine = {
        f"{opt.param_names[id(p)]}.{key}": value.contiguous()
        for g in opt.param_groups
        for p in g["params"]
        for key, value in opt.state[p].items()
    }
    save_file(mine, f"{root}/rank{rank}.safetensors")


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, head_dim=8, seq_len=8))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # one process loads: meant
def test_distributed_checkpoint_of_two_ranks_loads_into_one_process(tmp_path):
    """Each rank saves only what it owns; one process loads all of it, every buffer by name,
    matrices from their owner and the replicated parameters' state from rank 0."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    run_gloo_ranks(_dcp_worker, 2, tmp_path, str(tmp_path))
    model = tiny_model()
    opt, _ = build_optimizer(model, lr=0.02)
    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    loaded = get_optimizer_state_dict(model, opt, options=flat)  # what to load into
    dcp.load(loaded, checkpoint_id=tmp_path / "dcp")
    set_optimizer_state_dict(model, opt, loaded, options=flat)
    owners = plan_ownership(routed_shapes(model), 2)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    names = {id(p): n for n, p in model.named_parameters()}
    for p, state in opt.state.items():
        saved = ranks[owners.get(names[id(p)], 0)]
        for key, value in state.items():
            assert torch.equal(value, saved[f"{names[id(p)]}.{key}"]), (names[id(p)], key)
    assert set(names.values()) == {k.rsplit(".", 1)[0] for r in ranks for k in r}
