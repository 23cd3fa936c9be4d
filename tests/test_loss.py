"""The memory-lean multi-exit loss against a straightforward full-logits computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import save_tiny
from sortednet.loss import combine, exit_losses, linear_cross_entropy
from sortednet.model import SortedLM

EXITS = [1, 2, 4]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return AutoModelForCausalLM.from_pretrained(save_tiny("llama", tmp_path_factory.mktemp("m")))


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 101, (3, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 11:] = 0
    labels = ids.clone()
    labels[:, :6] = -100  # prompt
    labels[2, 11:] = -100  # padding
    return ids, mask, labels


def _reference_soft_loss(lm, ids, mask, labels, weights=None):
    """Full [batch, seq, vocab] logits per exit from HF's hidden states, then plain cross-entropy."""
    out = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    losses = []
    for e in EXITS:
        hidden = out.hidden_states[e] if e == 4 else lm.model.norm(out.hidden_states[e])
        logits = lm.lm_head(hidden)
        losses.append(F.cross_entropy(logits[:, :-1].reshape(-1, 101), labels[:, 1:].reshape(-1)))
    weights = torch.tensor(weights or [1.0] * len(EXITS))
    return (weights / weights.sum() * torch.stack(losses)).sum(), losses


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 3.0]])
@pytest.mark.parametrize("chunk_elements", [101 * 4, 1 << 24])
def test_soft_loss_and_gradients_equal_full_logits_reference(lm, weights, chunk_elements):
    ids, mask, labels = _batch()
    net = SortedLM(lm)
    hidden = net.exit_hidden_states(ids, mask, EXITS)
    losses = exit_losses(hidden, {e: net.head(e) for e in EXITS}, labels, chunk_elements)
    loss = combine(losses, weights)
    grads = torch.autograd.grad(loss, list(lm.parameters()))

    ref, ref_losses = _reference_soft_loss(lm, ids, mask, labels, weights)
    ref_grads = torch.autograd.grad(ref, list(lm.parameters()))
    assert abs(loss.item() - ref.item()) < 1e-5
    for e, r in zip(EXITS, ref_losses, strict=True):
        assert abs(losses[e].item() - r.item()) < 1e-5
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_linear_cross_entropy_with_bias_and_frozen_weight():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 8, generator=g, requires_grad=True)
    head = torch.nn.Linear(8, 13)
    head.weight.requires_grad_(False)
    targets = torch.randint(0, 13, (10,), generator=g)
    scale = torch.rand(10, generator=g)
    (linear_cross_entropy(x, head, targets, chunk_elements=13 * 3) * scale).sum().backward()
    got_x, got_b = x.grad.clone(), head.bias.grad.clone()
    x.grad = head.bias.grad = None
    (F.cross_entropy(head(x), targets, reduction="none") * scale).sum().backward()
    torch.testing.assert_close(got_x, x.grad)
    torch.testing.assert_close(got_b, head.bias.grad)
    assert head.weight.grad is None


def test_batch_without_response_tokens_gives_zero_loss_not_nan(lm):
    ids, mask, _ = _batch()
    labels = torch.full_like(ids, -100)
    net = SortedLM(lm)
    lm.zero_grad()
    losses = exit_losses(net.exit_hidden_states(ids, mask, EXITS), {e: net.head(e) for e in EXITS}, labels)
    loss = combine(losses)
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in lm.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and not g.any() for g in grads)
