"""The loss of an optimizer step is one token mean over every label token of the step (all micro-batches, all
ranks), so gradient accumulation and the rank count do not change the gradient."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from conftest import rows_of_very_different_lengths, save_tiny, sorted_module
from sortednet.config import DataConfig, ModelConfig, ObjectiveConfig
from sortednet.training.datamodule import AlpacaDataModule


class _Grads(L.Callback):
    """The accumulated gradients of the first optimizer step, as the optimizer sees them."""

    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


def _first_step_grads(model_dir, tokenizer, data_file, cache_dir, batch_size: int, accumulate: int, **objective):
    torch.manual_seed(0)
    data = DataConfig(path=str(data_file), batch_size=batch_size, val_size=4, max_length=96)
    module = sorted_module(
        ModelConfig(name_or_path=str(model_dir)),
        ObjectiveConfig(**objective),
        exits=[2, 4],
        cache_dir=cache_dir,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.0),
    )
    grads = _Grads()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate, logger=False, callbacks=[grads],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=AlpacaDataModule(data, tokenizer, str(cache_dir), seed=3))
    return grads.grads, trainer.callback_metrics


@pytest.mark.parametrize("objective", [{"name": "soft"}, {"name": "sft"}])
def test_accumulating_two_batches_of_four_gives_the_gradient_of_one_batch_of_eight(
    tmp_path, tokenizer, cache_dir, objective
):
    model = save_tiny("llama", tmp_path / "model", vocab_size=tokenizer.vocab_size)
    data_file = tmp_path / "rows.json"
    data_file.write_text(json.dumps(rows_of_very_different_lengths(12)))
    whole, whole_metrics = _first_step_grads(model, tokenizer, data_file, cache_dir, 8, 1, **objective)
    accumulated, accumulated_metrics = _first_step_grads(model, tokenizer, data_file, cache_dir, 4, 2, **objective)
    assert whole.keys() == accumulated.keys() and whole
    for name, grad in whole.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # the logged step loss is the step's token mean too, for every exit
    logged = {k for k in whole_metrics if k.startswith("train/loss")}
    assert logged and logged == {k for k in accumulated_metrics if k.startswith("train/loss")}
    for key in logged:
        assert float(accumulated_metrics[key]) == pytest.approx(float(whole_metrics[key]), rel=1e-5), key


def test_the_step_token_count_covers_the_whole_step_and_ends_it_once():
    from sortednet.training.datamodule import GlobalOrderSampler

    counts = list(range(10, 20))  # label tokens of rows 0..9
    sampler = GlobalOrderSampler(10, batch_size=2, world_size=1, rank=0, seed=0)
    order = list(sampler)
    seen = []
    for _ in range(5):  # micro-batches of 2 rows; steps of 2 micro-batches, the last step one micro-batch
        seen.append(sampler.step_of_next_batch(2, counts))
        sampler.advance()
    step = [sum(counts[r] for r in order[i : i + 4]) for i in (0, 4)] + [sum(counts[r] for r in order[8:])]
    assert seen == [(step[0], False), (step[0], True), (step[1], False), (step[1], True), (step[2], True)]
