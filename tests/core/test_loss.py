"""The memory-lean multi-exit loss against a straightforward full-logits computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import save_tiny
from sortednet.loss import label_positions, linear_cross_entropy, multi_exit_loss
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


def soft_loss(net: SortedLM, ids, mask, labels, exits=EXITS, weights=None, **kwargs):
    positions, targets = label_positions(labels)
    rows = net.exit_hidden_states(ids, mask, exits, positions)
    return multi_exit_loss(rows, {e: net.head(e) for e in exits}, targets, weights, **kwargs)


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
    loss, losses = soft_loss(SortedLM(lm), ids, mask, labels, weights=weights, chunk_elements=chunk_elements)
    grads = torch.autograd.grad(loss, list(lm.parameters()))

    ref, ref_losses = _reference_soft_loss(lm, ids, mask, labels, weights)
    ref_grads = torch.autograd.grad(ref, list(lm.parameters()))
    assert abs(loss.item() - ref.item()) < 1e-5
    for e, r in zip(EXITS, ref_losses, strict=True):
        assert abs(losses[e].item() - r.item()) < 1e-5
        assert not losses[e].requires_grad  # per-exit values are for logging
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_gradient_scales_with_the_incoming_gradient(lm):
    """Gradients are made in the forward pass; backward must still honour a scaled loss (accumulation, AMP)."""
    ids, mask, labels = _batch()
    net = SortedLM(lm)
    (g1,) = torch.autograd.grad(soft_loss(net, ids, mask, labels)[0], [lm.lm_head.weight])
    (g3,) = torch.autograd.grad(0.25 * soft_loss(net, ids, mask, labels)[0], [lm.lm_head.weight])
    torch.testing.assert_close(g3, 0.25 * g1)


def test_linear_cross_entropy_with_bias_row_weights_and_frozen_weight():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 8, generator=g, requires_grad=True)
    head = torch.nn.Linear(8, 13)
    head.weight.requires_grad_(False)
    targets = torch.randint(0, 13, (10,), generator=g)
    row_weights = torch.rand(10, generator=g)
    total, per_row = linear_cross_entropy(x, head, targets, row_weights, chunk_elements=13 * 3)
    total.backward()
    got_x, got_b = x.grad.clone(), head.bias.grad.clone()
    x.grad = head.bias.grad = None
    reference = F.cross_entropy(head(x), targets, reduction="none")
    (reference * row_weights).sum().backward()
    torch.testing.assert_close(per_row, reference.detach())
    torch.testing.assert_close(got_x, x.grad)
    torch.testing.assert_close(got_b, head.bias.grad)
    assert head.weight.grad is None


def test_batch_without_response_tokens_gives_zero_loss_not_nan(lm):
    ids, mask, _ = _batch()
    lm.zero_grad()
    loss, losses = soft_loss(SortedLM(lm), ids, mask, torch.full_like(ids, -100))
    loss.backward()
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in losses.values())
    grads = [p.grad for p in lm.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and not g.any() for g in grads)


def test_no_gradient_work_in_evaluation(lm):
    ids, mask, labels = _batch()
    with torch.no_grad():
        loss, losses = soft_loss(SortedLM(lm), ids, mask, labels)
    ref, ref_losses = _reference_soft_loss(lm, ids, mask, labels)
    assert not loss.requires_grad and abs(loss.item() - ref.item()) < 1e-5
