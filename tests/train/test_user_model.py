"""Bring your own model (`--model`, docs/models.md): examples/llama.py trains with the family's
optimizers, resumes bit-exactly and ablates; every kind of bad model is one line and exit 2;
Hugging Face architectures (when transformers is installed) train with random weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.cli import assert_one_line_error, mousse_command, summary, train_losses, val_losses
from support.usermodel import FAST, LLAMA, ROOT, SMALL

from mousse.experiments.bench import matrix_shapes
from mousse.train import tomlio
from mousse.train.config import ConfigError, parse_model_config, resolve
from mousse.train.estimate import estimate, memory_bytes
from mousse.train.presets import OPTIMIZER_NAMES
from mousse.train.trainer import Trainer
from mousse.train.usermodel import build_model

SETTINGS = {
    "model": LLAMA,
    "model_config": "d_model=64,n_layers=1",
    "seq_len": 64,
    "batch_size": 2,
    "micro_batch_size": 2,
    "eval_tokens": 4096,
}


def test_model_config_values_are_typed():
    assert parse_model_config("d_model=64, lr=1e-3,tied=true,act=gelu,flag=False") == {
        "d_model": 64,
        "lr": 0.001,
        "tied": True,
        "act": "gelu",
        "flag": False,
    }
    assert parse_model_config(None) == {} and parse_model_config("") == {}
    # recorded canonically (sorted), so an equal setting compares equal on resume
    cfg = resolve({"model": LLAMA, "model_config": "n_layers=1, d_model=64"})
    assert cfg.model_config == "d_model=64,n_layers=1"
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.head_dim) == (None, None, None, None)


def test_llama_roles_are_inferred_by_module():
    torch.manual_seed(0)
    model = build_model(resolve(SETTINGS), 256)
    roles = model.param_roles()
    assert roles["net.embed.weight"] == "embedding" and roles["net.output.weight"] == "head"
    assert roles["net.blocks.0.attn.wq.weight"] == "matrix"
    assert roles["net.blocks.0.mlp.down.weight"] == "matrix"
    assert roles["net.blocks.0.attn_norm.weight"] == roles["net.norm.weight"] == "scalar"
    assert set(roles) == {n for n, _ in model.named_parameters()}
    logits, loss = model(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, 256) and loss.ndim == 0


def test_train_records_the_model_and_learns(cli, tmp_path):
    run_dir = tmp_path / "run"
    res = cli(
        "train",
        "--model",
        LLAMA,
        *SMALL,
        *FAST,
        "--steps",
        "8",
        "--eval-every",
        "4",
        "--optimizer",
        "muon",
        "--run-dir",
        run_dir,
        "--json",
    )
    assert res.exit_code == 0, res
    out = res.json()
    assert out["status"] == "completed" and out["steps"] == 8
    assert out["final_val_loss"] < 5.0  # from ln(256) = 5.55
    config = tomlio.load(run_dir / "config.toml")
    assert config["model"] == LLAMA and config["model_config"] == "d_model=64,n_layers=1"
    assert "d_model" not in config and "n_layers" not in config  # the GPT's shape: unused
    assert "7 matrix -> muon" in " ".join(res.stderr.split())  # 4 attention + 3 MLP Linears
    assert "matrix optimizer" not in res.stderr  # the warning of a model with no matrix


@pytest.mark.parametrize("optimizer", OPTIMIZER_NAMES)
def test_every_optimizer_trains_a_user_model(builtin_data, tmp_path, optimizer):
    out = Trainer(
        resolve(
            {**SETTINGS, "optimizer": optimizer, "steps": 3, "eval_every": 3, "precond_freq": 2}
        ),
        tmp_path / "run",
    ).run()
    assert out["status"] == "completed" and out["final_val_loss"] < 6, out


N = 4


@pytest.fixture(scope="module")
def reference(builtin_data, tmp_path_factory):
    """A 2N-step Mousse run of the Llama with checkpoints at N and 2N."""
    run_dir = tmp_path_factory.mktemp("llama") / "run"
    out = Trainer(
        resolve(
            {
                **SETTINGS,
                "steps": 2 * N,
                "eval_every": N,
                "checkpoint_every": N,
                "log_every": 1,
                "keep_checkpoints": 5,
                "precond_freq": 3,
            }
        ),
        run_dir,
    ).run()
    assert out["status"] == "completed"
    return run_dir


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path)


def test_resume_is_bit_exact(cli, reference, tmp_path):
    new = tmp_path / "resumed"
    res = cli(
        "train",
        "--resume",
        reference / "checkpoints" / f"step-{N}",
        "--run-dir",
        new,
        "--trust-model-code",
    )
    assert res.exit_code == 0, res
    assert train_losses(new) == {s: v for s, v in train_losses(reference).items() if s > N}
    assert val_losses(new)[2 * N] == val_losses(reference)[2 * N]
    assert summary(new)["final_val_loss"] == summary(reference)["final_val_loss"]
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = weights(reference / "checkpoints" / f"step-{2 * N}" / name)
        b = weights(new / "checkpoints" / f"step-{2 * N}" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--model-config", "d_model=32,n_layers=1"], ["--model-config", "d_model=64,n_layers=1"]),
        (["--model", f"{ROOT / 'examples' / 'llama.py'}:Llama"], ["--model", "llama.py:llama"]),
    ],
)
def test_resume_refuses_another_model(cli, reference, tmp_path, args, needles):
    res = cli(
        "train",
        "--resume",
        reference / "checkpoints" / f"step-{N}",
        "--run-dir",
        tmp_path / "x",
        *args,
    )
    assert_one_line_error(res, *needles, "new run")


def test_resume_of_a_gpt_run_refuses_a_model(cli, tmp_path):
    run_dir = tmp_path / "gpt"
    res = cli("train", "--d-model", "64", *FAST, "--steps", "2", "--run-dir", run_dir)
    assert res.exit_code == 0, res
    res = cli("train", "--resume", run_dir, "--model", LLAMA)
    assert_one_line_error(res, "the built-in GPT")


def test_ablate_two_optimizers_on_a_user_model_from_a_spec(cli, tmp_path):
    spec, adir = tmp_path / "spec.toml", tmp_path / "ab"
    spec.write_text(
        f'[base]\nmodel = "{LLAMA}"\nmodel_config = "d_model=64,n_layers=1"\n'
        '[sweep]\noptimizer = ["muon", "mousse"]\n'
    )
    res = cli(
        "ablate",
        spec,
        *FAST,
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--ablation-dir",
        adir,
        "--json",
        "--trust-model-code",  # the spec names the model's code
    )
    assert res.exit_code == 0, res
    runs = res.json()["runs"]
    assert sorted(r["name"] for r in runs) == ["mousse", "muon"]
    assert all(r["status"] == "completed" for r in runs)
    assert f'model = "{LLAMA}"' in (adir / "runs" / "mousse" / "config.toml").read_text()


def test_cost_estimate_and_bench_shapes_use_the_model(builtin_data):
    cfg = resolve(SETTINGS)
    assert 0 < memory_bytes(cfg, 256) < 50e6
    est = estimate(cfg, 256, torch.device("cpu"))
    assert est.method == "probe" and est.step_seconds > 0
    shapes = matrix_shapes("tiny", {"model": LLAMA, "model_config": "d_model=64,n_layers=1"})
    assert shapes == {(64, 64): 4, (192, 64): 2, (64, 192): 1}


def test_bench_command_takes_the_model(cli):
    res = cli(
        "bench",
        "--preset",
        "tiny",
        "--model",
        LLAMA,
        "--model-config",
        "d_model=64,n_layers=1",
        "--repeats",
        "1",
        "--json",
    )
    assert res.exit_code == 0, res
    assert {tuple(s["shape"]) for s in res.json()["shapes"]} == {(64, 64), (192, 64), (64, 192)}


# ---- bad input: one line, exit 2 -----------------------------------------------------------------

BAD_MODELS = {
    "not_callable.py": "make = 3\n",
    "not_module.py": "def make(vocab_size, seq_len):\n    return 3\n",
    "bad_shape.py": (
        "from torch import nn\n"
        "def make(vocab_size, seq_len):\n    return nn.Embedding(vocab_size, 8)\n"
    ),
    "bad_output.py": (
        "from torch import nn\nclass M(nn.Module):\n"
        "    def __init__(self, v):\n        super().__init__()\n"
        "        self.e = nn.Embedding(v, v)\n"
        "    def forward(self, idx):\n        return self.e(idx), None\n"
        "def make(vocab_size, seq_len):\n    return M(vocab_size)\n"
    ),
    "no_seq_len.py": "def make(vocab_size):\n    return None\n",
    "crashes.py": "def make(vocab_size, seq_len):\n    raise RuntimeError('out of ideas')\n",
    "syntax.py": "def make(vocab_size, seq_len)\n    pass\n",
    "unknown_role.py": (
        "import torch\nfrom torch import nn\nclass M(nn.Module):\n"
        "    def __init__(self, v):\n        super().__init__()\n"
        "        self.e = nn.Embedding(v, 8)\n"
        "        self.pos = nn.Parameter(torch.zeros(16, 8))\n"
        "        self.out = nn.Linear(8, v)\n"
        "    def forward(self, idx):\n"
        "        return self.out(self.e(idx) + self.pos[:idx.shape[1]])\n"
        "def make(vocab_size, seq_len):\n    return M(vocab_size)\n"
    ),
    "bad_roles.py": (
        "from torch import nn\nclass M(nn.Module):\n"
        "    def __init__(self, v):\n        super().__init__()\n"
        "        self.e = nn.Embedding(v, v)\n"
        "    def forward(self, idx):\n        return self.e(idx)\n"
        "    def param_roles(self):\n        return {}\n"
        "def make(vocab_size, seq_len):\n    return M(vocab_size)\n"
    ),
    "no_params.py": (
        "import torch\nfrom torch import nn\nclass M(nn.Module):\n"
        "    def forward(self, idx):\n        return torch.zeros(*idx.shape, 256)\n"
        "def make(vocab_size, seq_len):\n    return M()\n"
    ),
    "roles_list.py": (
        "from torch import nn\nclass M(nn.Module):\n"
        "    def __init__(self, v):\n        super().__init__()\n"
        "        self.e = nn.Embedding(v, v)\n"
        "    def forward(self, idx):\n        return self.e(idx)\n"
        "    def param_roles(self):\n        return ['embedding']\n"
        "def make(vocab_size, seq_len):\n    return M(vocab_size)\n"
    ),
    "fails_at_batch.py": (  # passes the (1, 2) check, fails at the run's batch shape
        "from torch import nn\nclass M(nn.Module):\n"
        "    def __init__(self, v):\n        super().__init__()\n"
        "        self.e = nn.Embedding(v, v)\n"
        "    def forward(self, idx):\n"
        "        if idx.shape[0] > 1:\n            raise RuntimeError('no batches')\n"
        "        return self.e(idx)\n"
        "def make(vocab_size, seq_len):\n    return M(vocab_size)\n"
    ),
}


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for name, text in BAD_MODELS.items():
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--model", "no_such_module_xyz:make"], ["no module 'no_such_module_xyz'"]),
        (["--model", "missing/model.py:make"], ["file not found: missing/model.py"]),
        (["--model", f"{LLAMA[:-6]}:lama"], ["has no 'lama'", "did you mean 'llama'"]),
        (["--model", "llama"], ["MODULE:FUNCTION", "hf:ARCH"]),
        (["--model", "{dir}/not_callable.py:make"], ["not callable"]),
        (["--model", "{dir}/not_module.py:make"], ["returned type int, not a torch.nn.Module"]),
        (["--model", "{dir}/bad_shape.py:make"], ["shape (1, 2, 8)", "(1, 2, 256)"]),
        (["--model", "{dir}/bad_output.py:make"], ["returned type tuple", "logits"]),
        (["--model", "{dir}/no_seq_len.py:make"], ["takes no argument 'seq_len'", "keywords"]),
        (["--model", "{dir}/crashes.py:make"], ["RuntimeError: out of ideas", "crashes.py:2"]),
        (["--model", "{dir}/syntax.py:make"], ["SyntaxError", "syntax.py:1"]),
        (
            ["--model", "{dir}/unknown_role.py:make"],
            ["role of 'pos'", "param_roles()", "e.weight=embedding"],
        ),
        (["--model", "{dir}/bad_roles.py:make"], ["gives 'e.weight' no role"]),
        (["--model", "{dir}/no_params.py:make"], ["has no parameters"]),
        (["--model", "{dir}/roles_list.py:make"], ["param_roles() returned list", "a dict"]),
        (
            ["--model", "{dir}/fails_at_batch.py:make"],
            ["(2, 64) batch failed", "RuntimeError: no batches", "fails_at_batch.py:8"],
        ),
        (["--model", LLAMA, "--model-config", "d_model"], ["not key=value"]),
        (["--model", LLAMA, "--model-config", "d_modl=64"], ["no argument 'd_modl'", "'d_model'"]),
        (["--model", LLAMA, "--model-config", "seq_len=8"], ["--seq-len"]),
        (["--model", LLAMA, "--model-config", "n_heads=3"], ["ValueError", "3 heads"]),
        (["--model", LLAMA, "--d-model", "64"], ["--d-model shapes the built-in GPT"]),
        (["--model-config", "d_model=64"], ["pass --model too"]),
    ],
)
def test_bad_model_is_one_line(cli, bad_models, tmp_path, args, needles):
    args = [a.replace("{dir}", str(bad_models)) for a in args]
    res = cli("train", *args, *FAST, "--steps", "1", "--run-dir", tmp_path / "run")
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "run").exists()


def test_a_model_failing_mid_training_marks_the_run_failed(cli, tmp_path):
    model = tmp_path / "flaky.py"
    model.write_text(
        "from torch import nn\nclass M(nn.Module):\n"
        "    calls = 0\n"
        "    def __init__(self, v):\n        super().__init__()\n"
        "        self.e = nn.Embedding(v, v)\n"
        "    def forward(self, idx):\n"
        "        if self.training and idx.shape[0] > 1:\n"
        "            M.calls += 1\n"
        "            if M.calls > 8:  # past the cost probe's six\n"
        "                raise RuntimeError('flaky')\n"
        "        return self.e(idx)\n"
        "def make(vocab_size, seq_len):\n    return M(vocab_size)\n"
    )
    run = tmp_path / "run"
    res = cli("train", "--model", f"{model}:make", *FAST, "--steps", "20", "--run-dir", run)
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res
    last = res.stderr_lines()[-1]
    assert last.startswith("error:") and "failed: RuntimeError: flaky (" in last, res
    written = summary(run)
    assert written["status"] == "failed" and "RuntimeError: flaky" in written["message"]


def test_a_model_with_nothing_for_the_matrix_optimizer_is_warned_about(cli, tmp_path):
    """An embedding and a head alone: nothing goes to Mousse, so the run trains with AdamW only.
    It trains (not an error), with one warning naming the cause and the fix."""
    model = tmp_path / "bigram.py"
    model.write_text(
        "from torch import nn\nclass M(nn.Module):\n"
        "    def __init__(self, v):\n        super().__init__()\n"
        "        self.e = nn.Embedding(v, 8)\n        self.head = nn.Linear(8, v)\n"
        "    def forward(self, idx):\n        return self.head(self.e(idx))\n"
        "def make(vocab_size, seq_len):\n    return M(vocab_size)\n"
    )
    run = tmp_path / "run"
    res = cli("train", "--model", f"{model}:make", *FAST, "--steps", "2", "--run-dir", run)
    assert res.exit_code == 0, res
    warned = [line for line in res.stderr_lines() if line.startswith("warning:")]
    assert len(warned) == 1, res
    for needle in ("no parameter", "matrix optimizer (mousse)", "adamw", "param_roles()"):
        assert needle in warned[0], res


def test_missing_hf_extra_names_the_install(cli, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    res = cli("train", "--model", "hf:llama", *FAST, "--steps", "1", "--run-dir", tmp_path / "r")
    assert_one_line_error(res, "pip install 'mousse[hf]'")


# ---- Hugging Face --------------------------------------------------------------------------------

HF_TINY = {
    "llama": "hidden_size=32,intermediate_size=64,num_hidden_layers=1,"
    "num_attention_heads=2,num_key_value_heads=2",
    "gpt2": "n_embd=32,n_layer=1,n_head=2",
}


@pytest.mark.parametrize("arch", HF_TINY)
def test_hf_architectures_train_and_resume(cli, tmp_path, arch):
    pytest.importorskip("transformers")
    run_dir = tmp_path / arch
    args = [
        "--model",
        f"hf:{arch}",
        "--model-config",
        HF_TINY[arch],
        *FAST,
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "2",
        "--log-every",
        "1",
    ]
    res = cli("train", *args, "--run-dir", run_dir, "--json")
    assert res.exit_code == 0, res
    assert res.json()["status"] == "completed"
    roles = build_model(
        resolve({"model": f"hf:{arch}", "model_config": HF_TINY[arch]}), 256
    ).param_roles()
    embeddings = [n for n, r in roles.items() if r == "embedding"]
    assert embeddings and any(r == "matrix" for r in roles.values())
    # gpt2 ties its head to the embedding: one tensor, an embedding; llama's head is its own
    assert [r for r in roles.values() if r == "head"] == ([] if arch == "gpt2" else ["head"])
    resumed = tmp_path / f"{arch}-resumed"
    res = cli("train", "--resume", run_dir / "checkpoints" / "step-2", "--run-dir", resumed)
    assert res.exit_code == 0, res
    assert train_losses(resumed) == {s: v for s, v in train_losses(run_dir).items() if s > 2}


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--model", "hf:lama"], ["not a causal LM architecture", "did you mean 'llama'"]),
        (["--model", "hf:gpt2", "--model-config", "n_embed=32"], ["no such setting", "'n_embd'"]),
    ],
)
def test_hf_bad_input_is_one_line(cli, tmp_path, args, needles):
    pytest.importorskip("transformers")
    res = cli("train", *args, *FAST, "--steps", "1", "--run-dir", tmp_path / "run")
    assert_one_line_error(res, *needles)


def test_build_errors_are_config_errors_for_library_users():
    with pytest.raises(ConfigError, match="has no 'lama'"):
        build_model(resolve({"model": f"{LLAMA[:-6]}:lama"}), 256)


# ---- the heavier paths: torch.compile and torchrun -----------------------------------------------


def _user_run(run_dir, *flags):
    return [
        *FAST,
        "--model",
        LLAMA,
        *SMALL,
        "--batch-size",
        "4",
        "--steps",
        "8",
        "--log-every",
        "1",
        "--eval-every",
        "8",
        "--run-dir",
        str(run_dir),
        *flags,
    ]


@pytest.mark.slow
def test_user_model_under_compile_follows_eager(cli, tmp_path):
    """--compile compiles a user model (and the optimizer) like the built-in GPT: same steps,
    losses within the rounding of generated kernels (tests/train/test_train.py's bound), in
    fp32, where bf16's rounding does not swamp them."""
    for name, compile_mode in (("eager", "off"), ("compiled", "on")):
        flags = ("--compile", compile_mode, "--precision", "fp32")
        assert cli("train", *_user_run(tmp_path / name, *flags)).exit_code == 0
    eager, compiled = train_losses(tmp_path / "eager"), train_losses(tmp_path / "compiled")
    assert list(compiled) == list(eager)
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=2e-3), step


@pytest.mark.slow
def test_user_model_on_two_ranks_matches_one_process(cli, tmp_path):
    """`--nproc 2` (torchrun, gloo) trains a user model to the same losses as one process."""
    assert cli("train", *_user_run(tmp_path / "one")).exit_code == 0
    proc = subprocess.run(
        [*mousse_command(), "train", *_user_run(tmp_path / "two", "--nproc", "2")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert list(two) == list(one)
    for step, loss in one.items():
        assert two[step] == pytest.approx(loss, rel=1e-5), step  # test_distributed.py's bound
