"""The family inside the trainer: TNT's sampled-label Fisher hook, SPlus's iterate-average
evaluation, resume of their extra state, and a short ablation over every optimizer."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from support.cli import FAST, FAST_SETTINGS, summary, train_losses

from mousse.optim import OPTIMIZER_CLASSES
from mousse.train.config import resolve
from mousse.train.data import train_batch, val_batches
from mousse.train.events import StepLogged
from mousse.train.optim_hooks import sample_labels, sampling_generator
from mousse.train.precision import autocast
from mousse.train.steptimer import StepTimer
from mousse.train.trainer import Trainer


def test_sampled_labels_follow_the_softmax():
    logits = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.0]).expand(1, 40000, 5)
    labels = sample_labels(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(labels.flatten(), minlength=5).double() / labels.numel()
    torch.testing.assert_close(freq, torch.softmax(logits[0, 0].double(), -1), atol=0.01, rtol=0)
    again = sample_labels(logits, torch.Generator().manual_seed(0))
    assert torch.equal(labels, again)  # a pure function of the generator's seed


def test_trainer_hands_tnt_the_sampled_label_gradient(builtin_data, tmp_path):
    """The Fisher gradient is the gradient of the loss on labels drawn from the model's own
    softmax, averaged over micro-batches like the ordinary gradient (recomputed here by hand)."""
    # fp32: bf16's rounding would hide a wrong label or micro batch in the comparison below
    settings = {"optimizer": "tnt", "batch_size": 4, "micro_batch_size": 2, "precision": "fp32"}
    cfg = resolve({**FAST_SETTINGS, **settings})
    trainer = Trainer(cfg, tmp_path / "r")
    fisher = trainer.opt.fisher_params()
    assert fisher and all(p.ndim == 2 for p in fisher)
    handed = {}
    trainer.opt.set_fisher_grads = lambda grads: handed.update(grads)
    trainer._forward_backward(1, StepTimer(trainer.device))
    expected = [torch.zeros_like(p) for p in fisher]
    for i in range(2):
        x, y = train_batch(trainer.data.train, cfg.seed, 1, 4, cfg.seq_len, slice(2 * i, 2 * i + 2))
        logits, _ = trainer.model(x, y)
        labels = sample_labels(logits.detach(), sampling_generator(cfg.seed, 1, i, logits.device))
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten()) / 2
        for e, g in zip(expected, torch.autograd.grad(loss, fisher), strict=True):
            e += g
    assert set(map(id, handed)) == set(map(id, fisher))
    for p, e in zip(fisher, expected, strict=True):
        torch.testing.assert_close(handed[p], e, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(handed[p], p.grad)  # not the ordinary gradient


def test_tnt_sampled_fisher_is_timed_and_differs_from_empirical(cli, tmp_path):
    runs = {}
    for fisher in ("sampled", "empirical"):
        res = cli(
            "train",
            *FAST,
            "--optimizer",
            "tnt",
            "--fisher",
            fisher,
            "--steps",
            "6",
            "--precond-freq",
            "2",
            "--log-every",
            "1",
            "--run-dir",
            tmp_path / fisher,
            "--json",
        )
        assert res.exit_code == 0, res
        runs[fisher] = res.json()
    assert runs["sampled"]["fisher_ms_median"] > 0
    assert runs["empirical"]["fisher_ms_median"] is None
    sampled, empirical = train_losses(tmp_path / "sampled"), train_losses(tmp_path / "empirical")
    assert sampled[1] == empirical[1] and sampled[6] != empirical[6]


def test_splus_evaluates_its_iterate_average_and_trains_on_raw_weights(builtin_data, tmp_path):
    cfg = resolve({**FAST_SETTINGS, "optimizer": "splus", "steps": 5, "eval_every": 100})
    trainer = Trainer(cfg, tmp_path / "r")
    trainer.run()
    raw = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    val = trainer.evaluate().loss
    assert all(torch.equal(raw[k], v) for k, v in trainer.model.state_dict().items())
    # by hand: matrices at avg / (1 - rate^t), everything else raw
    matrix = trainer.opt.parts["matrix"]
    rate = matrix.param_groups[0]["average_rate"]
    with torch.no_grad():
        for p in matrix.param_groups[0]["params"]:
            st = matrix.state[p]
            p.copy_(st["average"] / (1 - rate ** int(st["step"])))
        with autocast(trainer.device, trainer.precision):  # as the trainer's evaluation
            losses = [
                trainer.model(x, y)[1]
                for x, y in val_batches(
                    trainer.data, cfg.eval_tokens, cfg.micro_batch_size, cfg.seq_len
                )
            ]
    assert abs(val - float(torch.stack(losses).mean())) < 1e-6
    assert trainer.opt.parts["matrix"].state[p]["average"].abs().sum() > 0


def test_tnt_and_splus_resume_exactly(builtin_data, tmp_path):
    """The sampled labels and the iterate average survive a checkpoint: an interrupted run
    resumed from it repeats the uninterrupted one bit for bit."""
    for name in ("tnt", "splus"):
        settings = {
            **FAST_SETTINGS,
            "optimizer": name,
            "steps": 8,
            "eval_every": 4,
            "log_every": 1,
            "checkpoint_every": 8,
            "precond_freq": 3,
        }
        ref = Trainer(resolve(settings), tmp_path / f"{name}-ref").run()
        stop = threading.Event()

        def on_event(event, stop=stop):
            if isinstance(event, StepLogged) and event.step == 3:
                stop.set()

        run_dir = tmp_path / f"{name}-stopped"
        Trainer(resolve(settings), run_dir, on_event=on_event, stop=stop).run()
        resumed = Trainer(resolve(settings), run_dir, resume=run_dir).run()
        assert resumed["resumed_from"] == 3 and resumed["status"] == "completed"
        assert train_losses(run_dir) == train_losses(tmp_path / f"{name}-ref"), name
        assert resumed["final_val_loss"] == ref["final_val_loss"], name


@pytest.mark.slow
def test_short_ablation_over_the_whole_family_completes(cli, tmp_path):
    names = [*OPTIMIZER_CLASSES, "adamw"]
    res = cli(
        "ablate",
        "--optimizer",
        ",".join(names),
        *FAST,
        "--steps",
        "12",
        "--no-baseline",
        "--ablation-dir",
        tmp_path / "a",
        "--json",
    )
    assert res.exit_code == 0, res
    for name in names:
        runs = list((tmp_path / "a" / "runs").glob(f"*{name}*"))
        assert runs, name
        assert all(summary(r)["status"] == "completed" for r in runs), name


def test_averaged_weights_right_after_loading_a_state_dict():
    """A resumed run that evaluates before its next step still sees the loaded average."""
    from mousse import SPlus

    w = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    opt = SPlus([w], lr=0.1, precond_freq=2)
    for _ in range(3):
        w.grad = torch.randn_like(w)
        opt.step()
    twin = torch.nn.Parameter(w.detach().clone())
    loaded = SPlus([twin], lr=0.1, precond_freq=2)
    loaded.load_state_dict(opt.state_dict())
    with opt.averaged_weights():
        expected = w.detach().clone()
    with loaded.averaged_weights():
        assert torch.equal(twin.detach(), expected)
    assert not torch.equal(expected, w.detach()) and torch.equal(twin.detach(), w.detach())
