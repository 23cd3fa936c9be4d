"""Self-distillation (loss.distill) and the exit-agreement metric against full-logits references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import save_tiny
from sortednet.loss import exit_metrics, label_positions, self_distillation_loss
from sortednet.model import SortedLM

EXITS = [1, 2, 4]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(save_tiny("llama", tmp_path_factory.mktemp("m")))


def _batch():
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 101, (3, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 12:] = -100
    return ids, mask, labels


def _full_logits(lm, ids, mask, labels):
    """Every exit's [n_labels, vocab] logits at the label positions, from HF's hidden states."""
    out = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    positions, targets = label_positions(labels)
    logits = {}
    for e in EXITS:
        hidden = out.hidden_states[e] if e == EXITS[-1] else lm.model.norm(out.hidden_states[e])
        logits[e] = lm.lm_head(hidden)[positions]
    return logits, targets


def _reference(lm, ids, mask, labels, distill, weights):
    logits, targets = _full_logits(lm, ids, mask, labels)
    teacher = logits[EXITS[-1]].detach().log_softmax(-1)
    w = torch.tensor(weights) / sum(weights)
    total, ces, kls = 0.0, [], []
    for i, e in enumerate(EXITS):
        ce = F.cross_entropy(logits[e], targets)
        kl = F.kl_div(logits[e].log_softmax(-1), teacher, log_target=True, reduction="batchmean")
        ces.append(ce)
        kls.append(kl)
        term = ce if e == EXITS[-1] else (1 - distill) * ce + distill * kl
        total = total + w[i] * term
    return total, ces, kls


@pytest.mark.parametrize("distill", [1.0, 0.3])
@pytest.mark.parametrize("chunk_elements", [101 * 4, 1 << 24])
def test_distillation_loss_and_gradients_equal_full_logits_reference(lm, distill, chunk_elements):
    ids, mask, labels = _batch()
    weights = [1.0, 2.0, 3.0]
    net = SortedLM(lm)
    positions, targets = label_positions(labels)
    rows = net.exit_hidden_states(ids, mask, EXITS, positions)
    loss, ce, kl = self_distillation_loss(rows, net.lm_head, targets, weights, distill, chunk_elements)
    grads = torch.autograd.grad(loss, list(lm.parameters()))

    ref, ref_ce, ref_kl = _reference(lm, ids, mask, labels, distill, weights)
    ref_grads = torch.autograd.grad(ref, list(lm.parameters()))
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for i, e in enumerate(EXITS):
        torch.testing.assert_close(ce[e], ref_ce[i].detach(), rtol=1e-5, atol=1e-6)
        expected_kl = torch.zeros(()) if e == EXITS[-1] else ref_kl[i].detach()
        torch.testing.assert_close(kl[e], expected_kl, rtol=1e-4, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_distill_zero_is_the_soft_loss(lm):
    """distill=0 leaves label cross-entropy at every exit: the paper's SoFT loss, gradients included."""
    from sortednet.loss import multi_exit_loss

    ids, mask, labels = _batch()
    net = SortedLM(lm)
    positions, targets = label_positions(labels)
    rows = net.exit_hidden_states(ids, mask, EXITS, positions)
    soft, _ = multi_exit_loss(rows, {e: net.lm_head for e in EXITS}, targets)
    distilled, _, _ = self_distillation_loss(rows, net.lm_head, targets, distill=0.0)
    torch.testing.assert_close(distilled, soft)
    head = net.lm_head.weight
    torch.testing.assert_close(torch.autograd.grad(distilled, head)[0], torch.autograd.grad(soft, head)[0])


def test_exit_metrics_equal_full_logits_reference(lm):
    """Validation's one pass: each exit's cross-entropy equals the training loss's per-exit value, and the agreement
    sums equal those of full probabilities, over chunks smaller than the rows."""
    from sortednet.loss import multi_exit_loss

    ids, mask, labels = _batch()
    net = SortedLM(lm)
    positions, targets = label_positions(labels)
    heads = {e: net.lm_head for e in EXITS}
    with torch.no_grad():
        rows = net.exit_hidden_states(ids, mask, EXITS, positions)
        losses, sums = exit_metrics(rows, heads, targets, chunk_elements=101 * 5)
        logits, _ = _full_logits(lm, ids, mask, labels)
        reference = multi_exit_loss(rows, heads, targets)[1]
    assert sorted(losses) == EXITS and sorted(sums) == EXITS[:-1]
    for e in EXITS:
        torch.testing.assert_close(losses[e], reference[e], rtol=1e-5, atol=1e-5)
    deep = logits[EXITS[-1]].softmax(-1)
    for e in EXITS[:-1]:
        p = logits[e].softmax(-1)
        accept, agree = sums[e]
        torch.testing.assert_close(accept, torch.minimum(p, deep).sum(), rtol=1e-5, atol=1e-5)
        assert int(agree) == int((p.argmax(-1) == deep.argmax(-1)).sum())
    # an exit that is the deepest itself agrees everywhere
    _, same = exit_metrics({1: rows[4], 4: rows[4]}, {1: net.lm_head, 4: net.lm_head}, targets)
    n = rows[4].shape[0]
    assert int(same[1][1]) == n and abs(float(same[1][0]) - n) < 1e-3
