"""Analytic FLOPs of a training step, for the benchmark's ideal ratios and for MFU.

Matmul FLOPs only (norms, softmax and the optimizer are noise at these sizes); a backward pass costs
twice its forward. Attention follows the PaLM convention (no causal discount).
"""

from __future__ import annotations


def layer_matmul_params(config) -> int:
    """Weights of one decoder layer's linear maps (attention projections + gated MLP)."""
    d = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    return d * q + 2 * d * kv + q * d + 3 * d * config.intermediate_size


def body_flops(config, num_layers: int, n_tokens: int, seq_len: int) -> float:
    """Forward + backward of ``num_layers`` decoder layers over ``n_tokens`` tokens of length-``seq_len`` rows."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    linear = 6 * layer_matmul_params(config) * n_tokens
    attention = 12 * config.num_attention_heads * head_dim * seq_len * n_tokens
    return num_layers * (linear + attention)


def head_flops(config, n_label_tokens: int) -> float:
    """Forward + backward of one LM head over the label positions."""
    return 6 * config.hidden_size * config.vocab_size * n_label_tokens


def train_step_flops(
    config,
    n_exits: int,
    n_tokens: int,
    n_label_tokens: int,
    seq_len: int,
    frozen_body: bool = False,
    adapters_only: bool = False,
) -> float:
    """A SoFT step (``n_exits`` = 1 is SFT): the body once, one head pass per exit at label positions.

    ``frozen_body`` (ICT) runs the body forward only. ``adapters_only`` (LoRA): every base weight is frozen, so
    body and heads make no weight gradients — 2 of the 3 passes (the adapters' own small matmuls not counted).
    """
    body = body_flops(config, config.num_hidden_layers, n_tokens, seq_len)
    heads = n_exits * head_flops(config, n_label_tokens)
    if adapters_only:
        return 2 / 3 * (body + heads)
    return (body / 3 if frozen_body else body) + heads
