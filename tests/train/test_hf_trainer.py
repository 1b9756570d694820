"""build_optimizer's optimizer in Hugging Face's Trainer, as people use it: a random-init GPT-2
(Conv1D weights, routed as stored), a cosine-with-warmup schedule, checkpoints, and a resume in
a fresh Trainer that continues the uninterrupted run's losses exactly."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer's own dependency (the hf extra installs it)

from mousse import build_optimizer


def _trainer(out, max_steps: int):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    opt, routes = build_optimizer(
        model, optimizer="mousse", lr=0.02, scalar_optimizer="adamw", scalar_lr=3e-3
    )
    assert any(r.transposed for r in routes)  # GPT-2's Conv1D weights, stored (in, out)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 64, (16,), generator=g) for _ in range(16)]
    args = transformers.TrainingArguments(
        str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
    )
    return transformers.Trainer(
        model=model,
        args=args,
        train_dataset=[{"input_ids": x, "labels": x} for x in rows],
        optimizers=(opt, transformers.get_cosine_schedule_with_warmup(opt, 2, 8)),
    )


def _losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_hf_trainer_trains_and_resumes_exactly(tmp_path):
    whole = _trainer(tmp_path / "whole", 8)
    whole.train()
    _trainer(tmp_path / "cut", 4).train()  # stops after its step-4 checkpoint
    resumed = _trainer(tmp_path / "cut", 8)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-4"))
    assert _losses(resumed)[-4:] == _losses(whole)[-4:]
    assert _losses(whole)[-1] < _losses(whole)[0]
