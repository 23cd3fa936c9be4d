"""A sorted model ready for inference, from a checkpoint alone (no training config).

Two kinds of ``ckpt`` are read:

- a Lightning ``.ckpt`` written by ``sortednet.train``: the model is rebuilt from the Hugging Face config
  stored in its ``sortednet`` metadata, its weights loaded strictly from ``net.lm.*`` and its ICT heads (if
  any) from ``net.exit_heads.<e>.*``; the tokenizer is the one the metadata names;
- a directory written by ``sortednet.export``: a plain Hugging Face model (sub-model K of a sorted model)
  whose ``config.json`` has a ``sortednet`` entry, with its tokenizer and ``prompt_style.json`` beside it.

Either way the result is ``(net, tokenizer, meta)``: ``meta`` is the checkpoint's metadata plus
``prompt_style`` (the template's name, ``alpaca`` when the checkpoint does not say), ``prompt_template``
(the template strings, when the checkpoint carries them) and ``source`` (the path read).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from sortednet.checkpoint import read_checkpoint
from sortednet.data.prompts import CHAT, ChatStyle, PromptStyle, get_prompt_style
from sortednet.errors import SortedNetError
from sortednet.hub import load_tokenizer
from sortednet.lora import adapted_base
from sortednet.model import SortedLM

REQUIRED_META = ("exits", "num_layers", "hf_config", "tokenizer")
PROMPT_STYLE_FILE = "prompt_style.json"
DEFAULT_PROMPT_STYLE = "alpaca"


def load_sorted(ckpt: str, cache_dir=None, device: str | torch.device | None = None):
    """``(SortedLM in eval mode, tokenizer, metadata)`` from a sortednet ``.ckpt`` or an exported directory."""
    path = Path(ckpt).expanduser()
    if path.is_dir():
        net, tokenizer, meta = _load_exported(path)
    elif path.is_file():
        net, tokenizer, meta = _load_lightning(path, cache_dir)
    else:
        raise SortedNetError(
            f"checkpoint {ckpt!r} not found; pass ckpt=PATH.ckpt (written by sortednet.train) "
            f"or a directory written by sortednet.export"
        )
    net.eval().requires_grad_(False)
    if device is not None:
        net.to(device)
    meta.setdefault("prompt_style", DEFAULT_PROMPT_STYLE)
    meta["source"] = str(path)
    return net, tokenizer, meta


def prompt_style_of(meta: dict, tokenizer) -> PromptStyle | ChatStyle:
    """The prompt template a checkpoint was trained with: its own strings if it carries them, else by name
    (``chat``: the tokenizer's chat template)."""
    template = meta.get("prompt_template")
    if template:
        return PromptStyle(with_input=template["with_input"], without_input=template["without_input"])
    return get_prompt_style(meta.get("prompt_style", DEFAULT_PROMPT_STYLE), tokenizer)


def _no_init():
    """Skip random initialisation when every weight is loaded right after (much faster for large models)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older layouts: initialising is only slower
        return contextlib.nullcontext()
    return no_init_weights()


def build_model(
    state: dict[str, torch.Tensor], meta: dict, source: str, dtype: torch.dtype | None = None, cache_dir=None
):
    """``(causal LM, exit-head state)`` from a sortednet checkpoint's state dict and metadata, strictly
    checked: the model is built from the stored Hugging Face config, so no training config is needed.
    A LoRA checkpoint's adapters are merged into its base model (``model``, loaded from the hub or disk)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise SortedNetError(f"{source!r} has incomplete sortednet metadata (no {', '.join(missing)})")
    lm_state = {k[len("net.lm.") :]: v for k, v in state.items() if k.startswith("net.lm.")}
    if meta.get("lora"):
        lm_state = _merged_lora_state(lm_state, meta, source, cache_dir)
    heads = {k[len("net.exit_heads.") :]: v for k, v in state.items() if k.startswith("net.exit_heads.")}
    if not lm_state:
        raise SortedNetError(f"{source!r} holds no model weights (net.lm.*); pass a checkpoint of sortednet.train")
    hf_config = dict(meta["hf_config"])
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
    if layers != meta["num_layers"]:
        raise SortedNetError(f"{source!r}: the metadata says {meta['num_layers']} layers, its config {layers}")
    expected = {str(e) for e in meta.get("exit_heads") or []}
    if {k.split(".", 1)[0] for k in heads} != expected:
        raise SortedNetError(
            f"{source!r}: its exit-head weights do not match its metadata (exit_heads={meta.get('exit_heads')})"
        )
    if dtype is not None:
        lm.to(dtype)
        heads = {k: v.to(dtype) for k, v in heads.items()}
    return lm.eval(), {k: v.contiguous() for k, v in heads.items()}


def _merged_lora_state(adapters: dict, meta: dict, source: str, cache_dir) -> dict[str, torch.Tensor]:
    """The base model's weights (``meta["model"]``, loaded in fp32) with a LoRA checkpoint's adapters merged
    by PEFT (``merge_and_unload``: plain linears again)."""
    return adapted_base(adapters, meta, source, cache_dir).merge_and_unload().state_dict()


def _load_lightning(path: Path, cache_dir):
    checkpoint = read_checkpoint(str(path))
    meta = dict(checkpoint["sortednet"])
    lm, head_state = build_model(checkpoint["state_dict"], meta, str(path), cache_dir=cache_dir)
    net = SortedLM(lm)
    heads = sorted(int(e) for e in meta.get("exit_heads") or [])
    if heads:
        net.add_exit_heads(heads)
        net.exit_heads.load_state_dict(head_state, strict=True)
    meta["exit_heads"] = heads
    tokenizer = load_tokenizer(meta["tokenizer"], cache_dir)
    return net, tokenizer, meta


def _load_exported(path: Path):
    from transformers import AutoModelForCausalLM

    config_file = path / "config.json"
    if not config_file.is_file():
        raise SortedNetError(
            f"{str(path)!r} is a directory without config.json; pass a .ckpt written by sortednet.train "
            f"or a directory written by sortednet.export"
        )
    try:
        entry = json.loads(config_file.read_text()).get("sortednet")
    except (json.JSONDecodeError, AttributeError) as error:
        raise SortedNetError(f"{str(config_file)!r} is not a JSON object; re-export the model") from error
    if not isinstance(entry, dict) or "exit" not in entry:
        raise SortedNetError(
            f"{str(path)!r} is a model directory without a sortednet entry in config.json; pass a .ckpt "
            f"written by sortednet.train or a directory written by sortednet.export"
        )
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, dtype="auto", local_files_only=True)
    except (OSError, ValueError) as error:
        raise SortedNetError(
            f"cannot load the model in {str(path)!r} ({type(error).__name__}); re-export it"
        ) from error
    net = SortedLM(lm)
    tokenizer = load_tokenizer(str(path))
    k = net.num_layers
    source_exits = [int(e) for e in entry.get("exits") or [k]]
    heads = sorted(int(e) for e in entry.get("exit_heads") or [])
    if entry.get("exit_heads_file"):  # a consolidated ICT model: its own heads sit beside the weights
        net.add_exit_heads(heads)
        try:
            net.exit_heads.load_state_dict(load_file(path / entry["exit_heads_file"]), strict=True)
        except (OSError, RuntimeError) as error:
            raise SortedNetError(f"{str(path)!r}: its exit heads file does not match exit_heads={heads}") from error
        exits = sorted(set(source_exits) | {k})
    else:
        # Exits below K would read the head of exit K; only with the shared head is that their own head.
        heads = []
        exits = [k] if entry.get("exit_heads") else sorted({e for e in source_exits if e <= k} | {k})
    meta = {
        "objective": entry.get("objective"),
        "exits": exits,
        "num_layers": k,
        "exit_heads": heads,
        "hf_config": lm.config.to_dict(),
        "model": str(path),
        "tokenizer": str(path),
        "prompt_style": entry.get("prompt_style", DEFAULT_PROMPT_STYLE),
        "exported_from": entry,
    }
    template_file = path / PROMPT_STYLE_FILE
    if template_file.is_file() and meta["prompt_style"] != CHAT:  # a chat template travels in the tokenizer
        try:
            template = json.loads(template_file.read_text())
            meta["prompt_template"] = {key: template[key] for key in ("with_input", "without_input")}
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise SortedNetError(
                f"{str(template_file)!r} is not a prompt template (with_input, without_input); re-export the model"
            ) from error
    return net, tokenizer, meta


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
