import math

import pytest
import torch

from mousse.train.config import resolve
from mousse.train.model import GPT, GPTConfig, gpt_param_count
from mousse.train.presets import PRESETS, get_preset, memory_estimate_bytes, param_count

TINY = GPTConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=2, head_dim=32, seq_len=32)


@pytest.mark.parametrize(
    "name, millions", [("160m", 162.2), ("250m", 247.1), ("500m", 494.3), ("800m", 834.0)]
)
def test_paper_param_counts(name, millions):
    assert round(param_count(get_preset(name)) / 1e6, 1) == millions


@pytest.mark.parametrize("name, millions", [("medium", 3.3), ("1.4m", 1.4), ("2.2m", 2.2)])
def test_scale_ladder_param_counts(name, millions):
    """The third CPU scale and the GPU ladder's rungs above small (0.85M), each named for its
    parameters."""
    assert round(param_count(get_preset(name)) / 1e6, 1) == millions


@pytest.mark.parametrize("name", ["1.4m", "2.2m"])
def test_the_gpu_ladder_trains_at_1x_within_4_epochs_of_the_builtin_corpus(name):
    """Each rung's steps are 1x the compute-optimal budget (20 tokens per non-embedding
    parameter, the first step that reaches it), and that stays within 4 epochs of the builtin
    corpus (beyond 4, repeated data stops paying)."""
    from mousse.train.budget import MAX_EPOCHS, gpt_non_embedding_params
    from mousse.train.data import load_dataset

    preset = get_preset(name)
    tokens = 20 * gpt_non_embedding_params(preset.model_config())
    per_step = preset.tokens_per_step
    assert (preset.steps - 1) * per_step < tokens <= preset.steps * per_step
    assert preset.steps * per_step < MAX_EPOCHS * len(load_dataset("builtin").train)


def test_the_old_ladder_names_are_refused_with_the_new_ones():
    for old in ("10m", "30m"):
        with pytest.raises(ValueError, match=r"gone: .*--preset 1\.4m \(was 10m\)"):
            get_preset(old)


@pytest.mark.parametrize("name", ["tiny", "small", "160m"])
def test_the_param_count_from_the_shape_is_the_built_models(name):
    cfg = get_preset(name).model_config()
    assert gpt_param_count(cfg) == param_count(get_preset(name))


def test_cpu_presets_are_byte_level_and_consistent():
    for p in PRESETS.values():
        assert p.grad_accum * p.micro_batch_size == p.batch_size
        assert p.n_heads * p.head_dim == p.d_model
    for name in ("tiny", "small", "medium", "1.4m", "2.2m"):
        assert get_preset(name).vocab_size == 256, name
    assert param_count(get_preset("tiny"), vocab_size=50304) > param_count(get_preset("tiny"))


@pytest.mark.parametrize(
    "name, every", [("tiny", 300), ("small", 600), ("medium", 100), ("1.4m", 100), ("160m", 500)]
)
def test_long_presets_checkpoint_on_the_way_and_a_flag_overrides(name, every):
    """Runs of minutes checkpoint at the end; longer ones every so often, so that a crash or a
    kill -9 (a scheduler's, the OOM killer's) loses minutes of the run, not all of it."""
    assert resolve({"preset": name}).checkpoint_every == every
    assert resolve({"preset": name, "checkpoint_every": 7}).checkpoint_every == 7


def test_get_preset_error_names_valid_and_closest():
    with pytest.raises(ValueError, match=r"did you mean '160m'.*valid presets: tiny, small"):
        get_preset("160M")


def test_memory_estimate_orders_optimizers():
    p = get_preset("160m")
    mousse, muon, adamw = (memory_estimate_bytes(p, o) for o in ("mousse", "muon", "adamw"))
    assert mousse > adamw > muon > 8 * param_count(p)
    with pytest.raises(ValueError, match="unknown optimizer"):
        memory_estimate_bytes(p, "sgd")


def test_forward_backward_shapes_and_initial_loss():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx = torch.randint(0, 256, (3, 32))
    assert model(idx).shape == (3, 32, 256)
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 32, 256) and loss.dtype == torch.float32
    assert abs(loss.item() - math.log(256)) < 1.0  # logits of unit scale: about ln V + 1/2
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_param_roles_and_names():
    model = GPT(TINY)
    roles = model.param_roles()
    assert roles.keys() == dict(model.named_parameters()).keys()
    assert roles.pop("embed.weight") == "embedding" and roles.pop("lm_head.weight") == "head"
    assert set(roles.values()) == {"matrix"} and len(roles) == 6 * TINY.n_layers
    assert "blocks.1.attn.q.weight" in roles and "blocks.0.mlp.proj.weight" in roles
    assert model.num_params() == 2 * 256 * 64 + 2 * 12 * 64 * 64


def test_init_std_follows_spectral_rule():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, d_model=256, n_layers=1, n_heads=4, head_dim=64, seq_len=8)
    p = dict(GPT(cfg).named_parameters())
    for name, want in [
        ("embed.weight", 1.0),
        ("blocks.0.mlp.fc.weight", 1 / 16),
        ("blocks.0.mlp.proj.weight", 1 / 32 * 0.5),
        ("lm_head.weight", 1 / 16),
    ]:
        assert p[name].std().item() == pytest.approx(want, rel=0.05), name


def test_causal():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    idx = torch.randint(0, 256, (2, 32))
    changed = idx.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 256
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert not torch.allclose(a[:, 20:], b[:, 20:])


def test_attention_on_a_cpu_runs_in_fp32_under_bf16_autocast():
    """bf16 q, k, v: the output and gradients are bf16 as autocast expects, computed as fp32
    attention of the same inputs (the fused bf16 CPU kernel is the slower and less exact one)."""
    import torch.nn.functional as F

    from mousse.train.model import causal_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = causal_attention(q, k, v)
    y.float().square().sum().backward()
    assert y.dtype is torch.bfloat16 and q.grad is not None and q.grad.dtype is torch.bfloat16
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert torch.equal(y, exact.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.equal(fused, y)  # what autocast alone would have computed
    x = torch.randn(2, 4, 16, 8)  # fp32 inputs outside autocast: the plain kernel
    assert torch.equal(
        causal_attention(x, x, x), F.scaled_dot_product_attention(x, x, x, is_causal=True)
    )
