"""The multi-exit loss, computed only where there are labels and never as full logits.

A SoFT step needs the cross-entropy of ``|B|`` exits. Computing ``[batch, seq, vocab]`` logits per exit
and stacking them (the usual early-exit recipe) costs ``|B|`` times the largest activation of the model.
Here the hidden states are first gathered at label positions (labels != -100), and the head + softmax
run over row chunks whose logits are recomputed in the backward pass, so the extra memory of an exit
is its ``[n_labels, hidden]`` rows.

Nothing in this file knows about Lightning or Hydra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# Logit elements per chunk (64 MiB in float32): bounds the transient memory of the head.
CHUNK_ELEMENTS = 1 << 24


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of ``x @ weight.T (+ bias)`` against ``targets``, chunked over rows."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk_rows):
        losses = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
        lse = torch.empty_like(losses)
        for start in range(0, x.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = F.linear(x[rows], weight, bias).float()
            lse[rows] = torch.logsumexp(logits, dim=-1)
            losses[rows] = lse[rows] - logits.gather(1, targets[rows, None]).squeeze(1)
        ctx.save_for_backward(x, weight, bias, targets, lse)
        ctx.chunk_rows = chunk_rows
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        x, weight, bias, targets, lse = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        for start in range(0, x.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            # d loss_i / d logits_i = softmax_i - onehot_i, scaled by the incoming per-row gradient.
            grad_logits = torch.exp(F.linear(x[rows], weight, bias).float() - lse[rows, None])
            grad_logits[torch.arange(grad_logits.shape[0], device=x.device), targets[rows]] -= 1.0
            grad_logits *= grad_losses[rows, None]
            if need_x:
                grad_x[rows] = (grad_logits.to(weight.dtype) @ weight).to(x.dtype)
            if need_w:
                grad_w += grad_logits.T @ x[rows].float()
            if need_b:
                grad_b += grad_logits.sum(0)
        return (
            grad_x,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None,
            None,
        )


def linear_cross_entropy(
    x: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS
) -> torch.Tensor:
    """Per-row CE of ``head(x)`` vs ``targets`` (``x``: ``[n, hidden]``), without storing ``[n, vocab]`` logits."""
    chunk_rows = max(1, chunk_elements // head.out_features)
    return _ChunkedLinearCrossEntropy.apply(x, head.weight, head.bias, targets, chunk_rows)


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where position t predicts label t+1, and those labels: (boolean mask over [batch, seq-1], targets)."""
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    return mask, shifted[mask]


def exit_losses(
    hidden: Mapping[int, torch.Tensor],
    heads: Mapping[int, torch.nn.Linear],
    labels: torch.Tensor,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> dict[int, torch.Tensor]:
    """Token-mean CE per exit over the response tokens.

    ``hidden`` maps exit -> normed hidden states ``[batch, seq, hidden]`` (as from
    :meth:`sortednet.model.SortedLM.exit_hidden_states`); ``heads`` maps exit -> its LM head.
    Exits that share a head go through the head in one call. A batch with no label tokens gives
    losses of exactly 0 that are still attached to the graph (no NaN, no unused parameters).
    """
    mask, targets = label_positions(labels)
    n_tokens = targets.numel()
    rows = {e: h[:, :-1][mask] for e, h in hidden.items()}
    losses: dict[int, torch.Tensor] = {}
    by_head: dict[int, list[int]] = {}
    for e in hidden:
        by_head.setdefault(id(heads[e]), []).append(e)
    for group in by_head.values():
        head = heads[group[0]]
        per_row = linear_cross_entropy(
            torch.cat([rows[e] for e in group]), head, targets.repeat(len(group)), chunk_elements
        )
        for e, exit_rows in zip(group, per_row.view(len(group), n_tokens), strict=True):
            losses[e] = exit_rows.sum() / max(n_tokens, 1)
    return losses


def combine(losses: Mapping[int, torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted mean of per-exit losses; uniform (the paper's SoFT loss) when ``weights`` is None."""
    exits = sorted(losses)
    if weights is None:
        weights = [1.0] * len(exits)
    total = sum(weights)
    return sum(w / total * losses[e] for w, e in zip(weights, exits, strict=True))
