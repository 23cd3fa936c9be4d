"""trainer.compile=true: every decoder layer through torch.compile gives the eager step's losses and gradients."""

from __future__ import annotations

import pytest
import torch

from conftest import save_tiny, sorted_module
from sortednet.config import ModelConfig


def _step(model_dir, batch, compile_layers: bool):
    module = sorted_module(ModelConfig(name_or_path=str(model_dir)), exits=[1, 2], compile_layers=compile_layers)
    loss, losses = module.training_loss(batch, step=0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return module, loss.detach(), losses, grads


@pytest.mark.slow
def test_compiled_layers_give_the_eager_losses_and_gradients(tmp_path):
    model_dir = save_tiny("llama", tmp_path / "model", num_hidden_layers=2)  # each layer compiles on its own
    torch.manual_seed(0)
    ids = torch.randint(0, 101, (3, 24))
    labels = ids.clone()
    labels[:, :10] = -100  # a prompt, masked
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    eager, eager_loss, eager_losses, eager_grads = _step(model_dir, batch, compile_layers=False)
    compiled, loss, losses, grads = _step(model_dir, batch, compile_layers=True)
    # the layers really run compiled (nn.Module.compile wraps the forward), the rest of the model eager
    assert all(layer._compiled_call_impl is not None for layer in compiled.net.decoder.layers)
    assert all(layer._compiled_call_impl is None for layer in eager.net.decoder.layers)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    assert losses.keys() == eager_losses.keys() == {1, 2}
    for e in losses:
        torch.testing.assert_close(losses[e], eager_losses[e], rtol=1e-5, atol=1e-6)
    assert grads.keys() == eager_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-5, atol=1e-5, msg=name)
