"""Low-rank adapters (LoRA) on a causal LM's decoder linears, and 4-bit (NF4) base weights for QLoRA.

``add_lora_(lm, settings)`` wraps every ``nn.Linear`` of the decoder layers whose name ends in one of
``settings.targets`` with :class:`LoRALinear`: ``y = base(x) + (alpha / rank) * B(A(dropout(x)))``, with ``A``
Kaiming-initialised and ``B`` zero, so the wrapped model starts equal to the base model. Every other parameter
is frozen. The base may be a bitsandbytes ``Linear4bit`` (QLoRA: the frozen weights are stored in NF4 and
dequantized per matmul; gradients flow through them to ``A`` and ``B``).

The sorted loss needs nothing special: every exit reads the frozen shared norm and head, and the adapters of
the layers below an exit receive that exit's gradient.

Checkpoints of a LoRA run hold the adapters only (``lora_state``); ``merge_lora_`` folds them into plain
``nn.Linear`` weights (``W + (alpha / rank) B A``) so an inference model is an ordinary Hugging Face model.
A QLoRA run's adapters are merged into the base weights loaded in 16/32 bits — the usual way to serve QLoRA
(the NF4 rounding the adapters were trained against is not reproduced).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sortednet.config import LoraConfig
from sortednet.errors import SortedNetError

QUANTIZATIONS = ("nf4",)


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base.weight
        device = weight.device if weight.device.type != "meta" else "meta"
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=torch.float32))
        if device != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.t() @ self.lora_B.t()
        return self.base(x) + (self.scale * update).to(x.dtype)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight (a plain ``nn.Linear`` base only)."""
        if type(self.base) is not nn.Linear:
            raise SortedNetError(
                f"cannot merge adapters into a {type(self.base).__name__}; load the base model unquantized to merge"
            )
        delta = self.scale * (self.lora_B.double() @ self.lora_A.double())
        self.base.weight += delta.to(self.base.weight.dtype)
        return self.base


def _decoder_layers(lm: nn.Module) -> nn.ModuleList:
    return lm.get_decoder().layers


def add_lora_(lm: nn.Module, settings: LoraConfig) -> list[str]:
    """Freeze ``lm`` and wrap the target linears of its decoder layers with adapters; the wrapped names."""
    if settings.rank < 1:
        raise SortedNetError(f"model.lora.rank={settings.rank}; LoRA needs a rank >= 1 (e.g. model.lora.rank=16)")
    lm.requires_grad_(False)
    wrapped = []
    for index, layer in enumerate(_decoder_layers(lm)):
        for name, module in list(layer.named_modules()):
            leaf = name.rpartition(".")[2]
            if leaf in settings.targets and not isinstance(module, LoRALinear) and hasattr(module, "in_features"):
                parent = layer.get_submodule(name.rpartition(".")[0]) if "." in name else layer
                setattr(parent, leaf, LoRALinear(module, settings.rank, settings.alpha, settings.dropout))
                wrapped.append(f"layers.{index}.{name}")
    if not wrapped:
        raise SortedNetError(
            f"model.lora.targets={list(settings.targets)} matched no linear layer of the decoder; "
            f"use names such as q_proj, v_proj, up_proj"
        )
    return wrapped


def lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters of ``module``'s state dict (what a LoRA checkpoint stores)."""
    return {k: v for k, v in module.state_dict().items() if ".lora_A" in k or ".lora_B" in k}


def merge_lora_(lm: nn.Module) -> int:
    """Replace every :class:`LoRALinear` in ``lm`` by its merged base linear; the number merged."""
    merged = 0
    for layer in _decoder_layers(lm):
        for name, module in list(layer.named_modules()):
            if isinstance(module, LoRALinear):
                parent = layer.get_submodule(name.rpartition(".")[0]) if "." in name else layer
                setattr(parent, name.rpartition(".")[2], module.merged())
                merged += 1
    return merged


def nf4_config(compute_dtype: torch.dtype = torch.bfloat16):
    """The QLoRA paper's quantization: 4-bit NormalFloat with double quantization, bf16 compute."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise SortedNetError(
            "model.quantization=nf4 needs bitsandbytes, which is not installed; pip install 'sortednet[bnb]'"
        ) from error
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def check_quantization(quantization: str | None, lora_rank: int, cuda: bool) -> None:
    """One-line errors for a quantization setting that cannot train here."""
    if quantization is None:
        return
    if quantization not in QUANTIZATIONS:
        raise SortedNetError(f"unknown model.quantization={quantization!r}; use nf4 (4-bit QLoRA) or null")
    if lora_rank < 1:
        raise SortedNetError(
            "model.quantization=nf4 freezes the base weights in 4 bits, so only adapters can train; "
            "add model.lora.rank=16 (QLoRA)"
        )
    if not cuda:
        raise SortedNetError(
            "model.quantization=nf4 loads the weights with bitsandbytes' 4-bit CUDA kernels and no CUDA device "
            "is visible; run on a GPU or drop model.quantization"
        )
