"""The multi-exit loss, computed only where there are labels and never as full logits.

A SoFT step needs the cross-entropy of ``|B|`` exits. Computing ``[batch, seq, vocab]`` logits per exit
and stacking them (the usual early-exit recipe) costs ``|B|`` times the largest activation of the model.
Here the hidden states are gathered at label positions (labels != -100) before the head, every exit
that shares a head goes through it in one call, and that call runs over row chunks: each chunk's
logits are made, turned into the loss and into the gradients of the head's input and weight, and
dropped. Gradients are computed in the forward pass because the loss is linear in them (the backward
pass only scales them by the incoming scalar), so the head costs exactly its three matmuls — no
recomputation — and its transient memory is one chunk of logits (never more rows than one exit has, so
no more than SFT's) plus one weight-sized gradient buffer.

Nothing in this file knows about Lightning or Hydra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from sortednet.errors import SortedNetError

IGNORE_INDEX = -100
# Logit elements per chunk (64 MiB in float32): bounds the transient memory of the head.
CHUNK_ELEMENTS = 1 << 24


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """``sum_i w_i * CE(x_i @ W.T + b, t_i)`` over row chunks, with its gradients made in the forward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, row_weights, chunk_rows):
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        losses = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=x.device) if need_b else None
        for start in range(0, x.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = F.linear(x[rows], weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            losses[rows] = lse - logits.gather(1, targets[rows, None]).squeeze(1)
            if not (need_x or need_w or need_b):
                del logits
                continue
            # d CE_i / d logits_i = softmax_i - onehot_i, scaled by the row's weight; reuses the logits buffer.
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(grad_logits.shape[0], device=x.device), targets[rows]] -= 1.0
            grad_logits.mul_(row_weights[rows, None])
            if need_x:
                grad_x[rows] = (grad_logits.to(weight.dtype) @ weight).to(x.dtype)
            if need_w:
                grad_w.addmm_(grad_logits.T, x[rows].float())
            if need_b:
                grad_b += grad_logits.sum(0)
            # Free this chunk's logits before the next chunk allocates its own (rebinding alone would not).
            del logits, grad_logits
        ctx.mark_non_differentiable(losses)
        ctx.save_for_backward(
            grad_x,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
        )
        return (losses * row_weights).sum(), losses

    @staticmethod
    def backward(ctx, grad_total, grad_losses_unused):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_total.to(g.dtype)  # noqa: E731
        return scale(grad_x), scale(grad_w), scale(grad_b), None, None, None


def linear_cross_entropy(
    x: torch.Tensor,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    row_weights: torch.Tensor,
    chunk_elements: int = CHUNK_ELEMENTS,
    max_chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_i w_i * CE_i, per-row CE detached)`` for ``head(x)`` vs ``targets``; ``x`` is ``[n, hidden]``.

    Never stores ``[n, vocab]`` logits: chunks hold at most ``chunk_elements`` logits and
    ``max_chunk_rows`` rows. Only the weighted sum carries gradients.
    """
    chunk_rows = max(1, min(chunk_elements // head.out_features, max_chunk_rows or x.shape[0]))
    weight, bias = head.weight, head.bias
    if not torch.is_grad_enabled():  # evaluation: skip the gradient work inside the forward pass
        x, weight, bias = x.detach(), weight.detach(), None if bias is None else bias.detach()
    return _FusedLinearCrossEntropy.apply(x, weight, bias, targets, row_weights.float(), chunk_rows)


def label_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose next token is a label, as a ``[batch, seq]`` mask, and those labels (flattened)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask, labels[:, 1:][mask[:, :-1]]


def count_labels(labels: torch.Tensor) -> int:
    """How many label positions (loss rows) ``labels`` holds: ``[seq]`` for one row or ``[batch, seq]``."""
    return int((labels[..., 1:] != IGNORE_INDEX).sum())


def normalised(weights: Sequence[float] | None, n: int) -> list[float]:
    """Exit weights summing to 1; uniform (the paper's SoFT mean) when ``weights`` is None."""
    weights = [1.0] * n if weights is None else list(weights)
    total = sum(weights)
    return [w / total for w in weights]


def multi_exit_loss(
    rows: Mapping[int, torch.Tensor],
    heads: Mapping[int, torch.nn.Linear],
    targets: torch.Tensor,
    weights: Sequence[float] | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The weighted mean over exits of each exit's token-mean cross-entropy, and the per-exit values.

    ``rows`` maps exit -> its normed hidden states at the label positions, ``[n_labels, hidden]``;
    ``heads`` maps exit -> its LM head; ``weights`` follow ``sorted(rows)``. Returns the loss (with
    gradients) and the detached per-exit losses. A batch with no label tokens gives exactly 0, still
    attached to the graph (no NaN, no unused parameters).
    """
    exits = sorted(rows)
    n_tokens = targets.numel()
    weight_of = dict(zip(exits, normalised(weights, len(exits)), strict=True))
    by_head: dict[int, list[int]] = {}
    for e in exits:
        by_head.setdefault(id(heads[e]), []).append(e)
    total = 0.0
    per_exit: dict[int, torch.Tensor] = {}
    for group in by_head.values():
        row_weights = torch.cat(
            [torch.full((n_tokens,), weight_of[e] / max(n_tokens, 1), device=targets.device) for e in group]
        )
        x = torch.cat([rows[e] for e in group])
        # Chunks of at most one exit's rows: the transient logits of |B| exits are those of one (SFT's).
        group_loss, losses = linear_cross_entropy(
            x, heads[group[0]], targets.repeat(len(group)), row_weights, chunk_elements, max(n_tokens, 1)
        )
        total = total + group_loss
        for e, exit_rows in zip(group, losses.view(len(group), n_tokens), strict=True):
            per_exit[e] = exit_rows.sum() / max(n_tokens, 1)
    return total, per_exit


class _FusedSelfDistillation(torch.autograd.Function):
    """``sum_e sum_i [a_e * CE(x_e,i W^T, t_i) + b_e * KL(p_L,i || p_e,i)]`` over position chunks, one shared head.

    ``x`` is ``[exits, n, hidden]`` with the last exit (the teacher, detached) last. Chunks run over positions,
    so each chunk makes the teacher's logits once and then one student's at a time: the transient memory is two
    chunks of logits, whatever the number of exits. As in :class:`_FusedLinearCrossEntropy`, the gradients are
    made in the forward pass: d/d logits_e = (a_e + b_e) p_e - a_e onehot(t) - b_e p_L.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, ce_weights, kl_weights, chunk_rows):
        need_x, need_w = ctx.needs_input_grad[:2]
        n_exits, n = x.shape[:2]
        ce = torch.empty(n_exits, n, dtype=torch.float32, device=x.device)
        kl = torch.zeros(n_exits, n, dtype=torch.float32, device=x.device)
        grad_x = torch.zeros_like(x) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=x.device) if need_w else None
        a, b = ce_weights.tolist(), kl_weights.tolist()

        def log_probs(e, rows):
            logits = F.linear(x[e, rows], weight).float()
            return logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))  # in place: one buffer per exit

        def add_gradient(e, rows, grad_logits):
            if need_x:
                grad_x[e, rows] = (grad_logits.to(weight.dtype) @ weight).to(x.dtype)
            if need_w:
                grad_w.addmm_(grad_logits.T, x[e, rows].float())

        teacher = n_exits - 1
        for start in range(0, n, chunk_rows):
            rows = slice(start, start + chunk_rows)
            t = targets[rows]
            index = torch.arange(t.shape[0], device=x.device)
            log_p_teacher = log_probs(teacher, rows)
            p_teacher = log_p_teacher.exp()
            ce[teacher, rows] = -log_p_teacher[index, t]
            neg_entropy = torch.einsum("iv,iv->i", p_teacher, log_p_teacher)
            if need_x or need_w:  # the teacher's own gradient is its cross-entropy's; reuses its log-prob buffer
                grad = log_p_teacher.copy_(p_teacher).mul_(a[teacher])
                grad[index, t] -= a[teacher]
                add_gradient(teacher, rows, grad)
            del log_p_teacher
            for e in range(teacher):
                log_p = log_probs(e, rows)
                ce[e, rows] = -log_p[index, t]
                kl[e, rows] = neg_entropy - torch.einsum("iv,iv->i", p_teacher, log_p)
                if need_x or need_w:
                    grad = log_p.exp_().mul_(a[e] + b[e]).sub_(p_teacher, alpha=b[e])
                    grad[index, t] -= a[e]
                    add_gradient(e, rows, grad)
                del log_p
            del p_teacher
        ctx.mark_non_differentiable(ce, kl)
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype) if need_w else None)
        total = (ce * ce_weights[:, None]).sum() + (kl * kl_weights[:, None]).sum()
        return total, ce, kl

    @staticmethod
    def backward(ctx, grad_total, grad_ce_unused, grad_kl_unused):
        grad_x, grad_w = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_total.to(g.dtype)  # noqa: E731
        return scale(grad_x), scale(grad_w), None, None, None, None


def self_distillation_loss(
    rows: Mapping[int, torch.Tensor],
    head: torch.nn.Linear,
    targets: torch.Tensor,
    weights: Sequence[float] | None = None,
    distill: float = 1.0,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """SoFT with self-distillation: every exit below the deepest learns ``(1 - distill) * CE(labels) + distill *
    KL(p_deepest || p_exit)`` against the same step's deepest exit, detached; the deepest keeps its cross-entropy.
    Exits are weighted as in :func:`multi_exit_loss` (``weights`` follow ``sorted(rows)``), every term a token mean.

    Returns the loss, the detached per-exit cross-entropies and the detached per-exit KL divergences (0 at the
    deepest). Never stores ``[n, vocab]`` logits per exit: chunks of positions, two chunks of logits at a time.
    """
    if head.bias is not None:
        raise SortedNetError("loss.distill supports LM heads without a bias (LLaMA-family models)")
    exits = sorted(rows)
    n_tokens = targets.numel()
    scale = [w / max(n_tokens, 1) for w in normalised(weights, len(exits))]
    ce_weights = torch.tensor([w * (1 - distill) for w in scale[:-1]] + scale[-1:], device=targets.device)
    kl_weights = torch.tensor([w * distill for w in scale[:-1]] + [0.0], device=targets.device)
    x = torch.stack([rows[e] for e in exits])
    weight = head.weight if torch.is_grad_enabled() else head.weight.detach()
    if not torch.is_grad_enabled():
        x = x.detach()
    chunk_rows = max(1, min(chunk_elements // head.out_features, max(n_tokens, 1)))
    total, ce, kl = _FusedSelfDistillation.apply(x, weight, targets, ce_weights, kl_weights, chunk_rows)
    n = max(n_tokens, 1)
    return total, dict(zip(exits, ce.sum(1) / n, strict=True)), dict(zip(exits, kl.sum(1) / n, strict=True))


@torch.no_grad()
def exit_metrics(
    rows: Mapping[int, torch.Tensor],
    heads: Mapping[int, torch.nn.Linear],
    targets: torch.Tensor,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[dict[int, torch.Tensor], dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Validation's numbers from one pass over each exit's logits, no gradients: per exit, the token-mean
    cross-entropy against ``targets``; per exit below the deepest, how well it agrees with the deepest at the same
    positions, as sums over positions of the expected acceptance ``sum_v min(p_exit, p_deepest)`` (the chance that
    speculative sampling accepts a token drafted from the exit) and of greedy agreement (the exit's argmax is the
    deepest's); divide those by the row count for means. Chunks of positions, a few chunks of logits at a time, each
    exit's head applied once per position."""
    *shallower, deepest = sorted(rows)
    n = rows[deepest].shape[0]
    chunk_rows = max(1, chunk_elements // heads[deepest].out_features)
    zero = torch.zeros((), device=rows[deepest].device)
    ce = dict.fromkeys(rows, zero)
    agreement = {e: (zero, zero) for e in shallower}
    with torch.no_grad():
        for start in range(0, n, chunk_rows):
            chunk = slice(start, start + chunk_rows)
            p_deep, ce_deep = _probs_and_ce(heads[deepest], rows[deepest][chunk], targets[chunk])
            ce[deepest] = ce[deepest] + ce_deep
            top_deep = p_deep.argmax(-1)
            for e in shallower:
                p, ce_exit = _probs_and_ce(heads[e], rows[e][chunk], targets[chunk])
                accept, agree = agreement[e]
                agreement[e] = (accept + torch.minimum(p, p_deep).sum(), agree + (p.argmax(-1) == top_deep).sum())
                ce[e] = ce[e] + ce_exit
                del p
    return {e: ce[e] / max(n, 1) for e in sorted(rows)}, agreement


def _probs_and_ce(head: torch.nn.Linear, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The probabilities of ``head(x)`` (float32) and the summed cross-entropy against ``targets``."""
    logp = head(x).float().log_softmax(-1)
    ce = -logp.gather(1, targets[:, None]).sum()
    return logp.exp_(), ce
