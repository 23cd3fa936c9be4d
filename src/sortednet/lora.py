"""Low-rank adapters (LoRA) through PEFT on a causal LM's decoder linears (QLoRA's 4-bit base: :mod:`sortednet.hub`).

``add_lora_(lm, settings)`` calls ``peft.get_peft_model``, which replaces every target linear of ``lm`` *in
place* by a PEFT LoRA layer (``y = base(x) + (alpha / rank) * B(A(dropout(x)))``, ``B`` zero at the start) and
freezes everything else. Because the replacement is in place, a :class:`~sortednet.model.SortedLM` over ``lm``
(which reads ``lm.model.layers``, the final norm and the LM head) drives the adapted layers unchanged; the
returned ``PeftModel`` is kept only where PEFT's own merge or save is needed. The base may be a bitsandbytes
``Linear4bit`` (QLoRA: PEFT's 4-bit LoRA layer; gradients flow through the NF4 weights to ``A`` and ``B``).

The sorted loss needs nothing special: every exit reads the frozen shared norm and head, and the adapters of
the layers below an exit receive that exit's gradient.

Checkpoints of a LoRA run hold the adapters only (:func:`lora_state`: PEFT's own parameter names under
``net.lm.``). :func:`adapted_base` rebuilds the base with those adapters; PEFT's ``merge_and_unload`` then
folds them into plain linears for inference, or ``save_pretrained`` writes a standard PEFT adapter directory.
A QLoRA run's adapters are merged into the base weights loaded in 32 bits — the usual way to serve QLoRA (the
NF4 rounding the adapters were trained against is not reproduced).
"""

from __future__ import annotations

import torch
from torch import nn

from sortednet.config import LoraConfig
from sortednet.errors import SortedNetError
from sortednet.hub import load_causal_lm

ADAPTER_KEYS = (".lora_A.", ".lora_B.")


def peft_lora_config(settings: LoraConfig):
    """Our knobs as a ``peft.LoraConfig`` (a causal-LM adapter, written as such into adapter_config.json)."""
    import peft  # lazy, here and below: PEFT imports transformers and accelerate, and only LoRA runs need it

    return peft.LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.targets),
        task_type="CAUSAL_LM",
    )


def add_lora_(lm: nn.Module, settings: LoraConfig):
    """Freeze ``lm`` and give the target linears of its decoder layers PEFT adapters, in place; the PeftModel."""
    import peft  # lazy: see peft_lora_config

    if settings.rank < 1:
        raise SortedNetError(f"model.lora.rank={settings.rank}; LoRA needs a rank >= 1 (e.g. model.lora.rank=16)")
    config = peft_lora_config(settings)
    try:
        # autocast keeps the adapters in fp32 over a bf16/fp16 base, as their small updates need
        return peft.get_peft_model(lm, config, autocast_adapter_dtype=True)
    except ValueError as error:
        reason = str(error).splitlines()[0]
        if "not found in the base model" in reason:
            raise SortedNetError(
                f"model.lora.targets={list(settings.targets)} matched no linear layer of the decoder; "
                f"use names such as q_proj, v_proj, up_proj"
            ) from error
        raise SortedNetError(f"model.lora.targets={list(settings.targets)} cannot take adapters ({reason})") from error


def lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters of ``module``'s state dict (what a LoRA checkpoint stores)."""
    return {k: v for k, v in module.state_dict().items() if any(part in k for part in ADAPTER_KEYS)}


def adapted_base(adapters: dict[str, torch.Tensor], meta, source: str, cache_dir=None):
    """The PeftModel of a LoRA checkpoint: its base (``meta.model``, fp32) with its adapters (``adapters``,
    keyed as in the causal LM's state dict) loaded and checked to fit; ``meta`` its
    :class:`~sortednet.checkpoint.Metadata`."""
    lm = load_causal_lm(meta.model, "float32", cache_dir)
    peft_model = add_lora_(lm, LoraConfig(**meta.lora))
    expected = set(lora_state(lm))
    if set(adapters) != expected:
        raise SortedNetError(
            f"{source!r}: its adapters do not fit the base model {meta.model!r} "
            f"({len(set(adapters) & expected)} of {len(expected)} adapter weights match); is the base the same?"
        )
    lm.load_state_dict(adapters, strict=False)
    return peft_model
