"""The one loader: a sorted model ready for inference from any sortednet checkpoint, no training config needed.

``ckpt`` is any of the three kinds of :mod:`sortednet.checkpoint`:

- a ``.ckpt`` file or a distributed (FSDP) checkpoint directory of ``sortednet.train``: the model is rebuilt from
  the Hugging Face config in its record, its weights loaded strictly from ``net.lm.*`` and its ICT heads (if any)
  from ``net.exit_heads.<e>.*``; a LoRA run's adapters are merged into its base; the tokenizer is the one the
  record names;
- a directory written by ``sortednet.export`` or ``sortednet.consolidate``: a plain Hugging Face model (sub-model
  K, or the whole model), with its tokenizer, prompt template and, for a consolidated ICT model, its exit heads.

Either way the result is ``(net, tokenizer, meta)``, ``meta`` the checkpoint's
:class:`~sortednet.checkpoint.Metadata` (``source`` the path read).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

try:
    from transformers.initialization import no_init_weights  # its place since transformers 5
except ImportError:  # older layouts: initialising is only slower
    no_init_weights = None

from sortednet.checkpoint import Metadata, read_metadata, read_training_checkpoint
from sortednet.errors import SortedNetError
from sortednet.hub import load_tokenizer
from sortednet.lora import adapted_base
from sortednet.model import SortedLM
from sortednet.prompts import ChatStyle, PromptStyle, get_prompt_style


def load_sorted(ckpt: str, cache_dir=None, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """``(SortedLM in eval mode, tokenizer, metadata)`` from any sortednet checkpoint; ``dtype`` casts the weights
    (default: as stored)."""
    path = Path(ckpt).expanduser()
    meta = read_metadata(ckpt) if path.is_dir() else None  # a file is read once, below
    if meta is not None and meta.exported_from is not None:
        net = _load_exported(path, meta)
    else:
        state, meta = read_training_checkpoint(ckpt)
        lm, head_state = build_model(state, meta, ckpt, cache_dir=cache_dir)
        del state
        net = SortedLM(lm)
        if meta.exit_heads:
            net.add_exit_heads(meta.exit_heads)
            net.exit_heads.load_state_dict(head_state, strict=True)
    net.eval().requires_grad_(False)
    if dtype is not None:
        net.to(dtype)
    if device is not None:
        net.to(device)
    tokenizer = load_tokenizer(meta.tokenizer, cache_dir)
    return net, tokenizer, dataclasses.replace(meta, source=str(path))


def prompt_style_of(meta: Metadata, tokenizer) -> PromptStyle | ChatStyle:
    """The prompt template a checkpoint was trained with: its own strings if it carries them, else by name
    (``chat``: the tokenizer's chat template)."""
    template = meta.prompt_template
    if template:
        return PromptStyle(with_input=template["with_input"], without_input=template["without_input"])
    return get_prompt_style(meta.prompt_style, tokenizer)


def _no_init():
    """Skip random initialisation when every weight is loaded right after (much faster for large models)."""
    return no_init_weights() if no_init_weights is not None else contextlib.nullcontext()


def build_model(state: dict[str, torch.Tensor], meta: Metadata, source: str, cache_dir=None):
    """``(causal LM, exit-head state)`` from a training checkpoint's state dict and record, strictly checked:
    the model is built from the stored Hugging Face config, so no training config is needed. A LoRA checkpoint's
    adapters are merged into its base model (``meta.model``, loaded from the hub or disk)."""
    lm_state = {k[len("net.lm.") :]: v for k, v in state.items() if k.startswith("net.lm.")}
    if meta.lora:
        lm_state = adapted_base(lm_state, meta, source, cache_dir).merge_and_unload().state_dict()
    heads = {k[len("net.exit_heads.") :]: v for k, v in state.items() if k.startswith("net.exit_heads.")}
    if not lm_state:
        raise SortedNetError(f"{source!r} holds no model weights (net.lm.*); pass a checkpoint of sortednet.train")
    hf_config = dict(meta.hf_config)
    model_type = hf_config.pop("model_type", None)
    if not model_type:
        raise SortedNetError(f"{source!r}: its stored Hugging Face config has no model_type")
    stored = next(iter(lm_state.values())).dtype
    try:
        config = AutoConfig.for_model(model_type, **hf_config)
        with _no_init():
            lm = AutoModelForCausalLM.from_config(config, dtype=stored)
    except (ValueError, KeyError) as error:
        raise SortedNetError(f"{source!r}: cannot build its model type {model_type!r} ({error})") from error
    try:
        lm.load_state_dict(lm_state, strict=True)
    except RuntimeError as error:
        raise SortedNetError(
            f"{source!r}: its weights are not those of the model its metadata describes "
            f"({str(error).splitlines()[0]}); is it from a different model?"
        ) from error
    layers = getattr(lm.config, "num_hidden_layers", None)
    if layers != meta.num_layers:
        raise SortedNetError(f"{source!r}: the metadata says {meta.num_layers} layers, its config {layers}")
    if {k.split(".", 1)[0] for k in heads} != {str(e) for e in meta.exit_heads}:
        raise SortedNetError(
            f"{source!r}: its exit-head weights do not match its metadata (exit_heads={meta.exit_heads})"
        )
    return lm.eval(), {k: v.contiguous() for k, v in heads.items()}


def _load_exported(path: Path, meta: Metadata) -> SortedLM:
    """The model of an exported directory (its record read already), with a consolidated ICT model's own heads."""
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype="auto", local_files_only=True)
    except (OSError, ValueError) as error:
        raise SortedNetError(
            f"cannot load the model in {str(path)!r} ({type(error).__name__}); re-export it"
        ) from error
    net = SortedLM(lm)
    heads_file = meta.exported_from.exit_heads_file
    if heads_file:
        net.add_exit_heads(meta.exit_heads)
        try:
            net.exit_heads.load_state_dict(load_file(path / heads_file), strict=True)
        except (OSError, RuntimeError) as error:
            raise SortedNetError(
                f"{str(path)!r}: its exit heads file does not match exit_heads={meta.exit_heads}"
            ) from error
    return net


def resolve_device(name: str) -> torch.device:
    """``device=`` of the inference commands: auto (cuda when available), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SortedNetError(f"unknown device={name!r}; use auto, cpu or cuda[:N]") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SortedNetError(f"device={name} but CUDA is not available here; use device=cpu")
    return device
