"""The four training objectives as plain PyTorch: what each does to the model and which exits its loss is taken at.

- ``soft`` (Sorted Fine-Tuning): every exit of the set trains the shared norm and head;
- ``sft``: the deepest exit only (exit L), the usual fine-tune;
- ``ict`` (intermediate classifier tuning): the decoder of an SFT checkpoint frozen, one new head per exit below L;
- ``extracted``: the model cut down to its first K layers, fine-tuned as a model of its own.

:func:`build_net` builds what a run trains, once: the causal LM (weights loaded, or on the meta device), the ICT
checkpoint it starts from, and the objective applied by :func:`apply_objective`; :func:`train_exits` names the exits
of its loss. ``sortednet.train`` builds the net here and hands it to the LightningModule
(:class:`sortednet.training.module.SortedModule`); ``python -m sortednet.plan`` builds on :func:`apply_objective`.
Nothing in this file knows about Lightning or Hydra.
"""

from __future__ import annotations

import logging

from torch import nn

from sortednet.checkpoint import Metadata, read_metadata, read_training_checkpoint
from sortednet.config import LoraConfig, ModelConfig, ObjectiveConfig
from sortednet.errors import SortedNetError
from sortednet.hub import causal_lm_from_config, load_causal_lm, load_config
from sortednet.lora import add_lora_
from sortednet.model import SortedLM, resolve_exits, truncate_layers_

log = logging.getLogger(__name__)
OBJECTIVES = ("soft", "sft", "ict", "extracted")


def check_objective(objective: ObjectiveConfig, lora: LoraConfig) -> None:
    """One-line errors for an objective that cannot run as configured, before any model is built."""
    if objective.name not in OBJECTIVES:
        raise SortedNetError(f"unknown objective {objective.name!r}; use objective={'|'.join(OBJECTIVES)}")
    if lora.rank and objective.name == "ict":
        raise SortedNetError("objective=ict trains exit heads on a frozen decoder; drop model.lora.rank")
    if objective.name == "ict" and not objective.init_from:
        raise SortedNetError(
            "objective=ict starts from an SFT checkpoint: pass objective.init_from=PATH.ckpt "
            "(the last.ckpt of a run with objective=sft)"
        )


def apply_objective(
    causal_lm: nn.Module, objective: ObjectiveConfig, exits, lora: LoraConfig
) -> tuple[SortedLM, list[int]]:
    """``causal_lm`` (in train mode) wrapped, with the objective applied: truncation for extracted, a frozen decoder
    plus new exit heads for ict, LoRA adapters where ``lora.rank`` is set. ``exits`` is the exit-set spec
    (:func:`sortednet.model.resolve_exits`). Returns the net and its exits (the kept layer count for extracted)."""
    net = SortedLM(causal_lm.train())  # from_pretrained returns eval mode
    resolved = resolve_exits(exits, net.num_layers)
    if objective.name == "extracted":
        keep = objective.layers or resolved[(len(resolved) - 1) // 2]
        truncate_layers_(causal_lm, keep)
        resolved = [keep]
    if objective.name == "ict":
        net.requires_grad_(False)
        net.add_exit_heads(resolved)
    if lora.rank:  # adapters only: the base weights, shared norm and head stay frozen
        add_lora_(causal_lm, lora)
    return net, resolved


def build_net(
    model: ModelConfig, objective: ObjectiveConfig, exits, cache_dir: str | None = None, meta: bool = False
) -> tuple[SortedLM, list[int]]:
    """The net a run trains and its exits: ``model`` loaded (``meta=True``: its shapes only, on the meta device,
    no weights read, as FSDP shards it before loading), ICT's starting checkpoint loaded into it (checked against
    it on meta), then the objective applied (:func:`apply_objective`). Config errors come before any weight is read."""
    check_objective(objective, model.lora)
    if meta:
        causal_lm = causal_lm_from_config(load_config(model.name_or_path, cache_dir), model.dtype, device="meta")
        if objective.name == "ict":  # the metadata only: under FSDP only rank 0 reads the weights
            check_init_checkpoint(SortedLM(causal_lm), objective.init_from)
    else:
        causal_lm = load_causal_lm(model.name_or_path, model.dtype, cache_dir, model.quantization)
        if objective.name == "ict":
            load_sorted_checkpoint(SortedLM(causal_lm), objective.init_from)
    return apply_objective(causal_lm, objective, exits, model.lora)


def train_exits(objective: str, exits: list[int]) -> list[int]:
    """The exits the loss is taken at: all of them for soft, L for sft, the exits below L for ict (exit L keeps
    the SFT head), and the kept layer count for extracted."""
    chosen = {"soft": exits, "sft": exits[-1:], "ict": exits[:-1], "extracted": exits}[objective]
    if not chosen:
        raise SortedNetError("objective=ict needs at least one exit below the last layer in the exit set")
    return chosen


def check_init_checkpoint(net: SortedLM, path: str) -> Metadata:
    """The metadata of the checkpoint ICT starts from (a ``.ckpt`` file or an FSDP checkpoint directory), checked
    against ``net``'s shape without reading its weights; a one-line error if it cannot be ``net``'s."""
    meta = read_metadata(path, exported=False)
    if meta.num_layers != net.num_layers or meta.hf_config.get("hidden_size") != net.lm.config.hidden_size:
        theirs = f"{meta.num_layers} layers of width {meta.hf_config.get('hidden_size')}"
        ours = f"{net.num_layers} layers of width {net.lm.config.hidden_size}"
        raise SortedNetError(
            f"{path!r} holds a model of {theirs}, model.name_or_path one of {ours}; start from the same base model"
        )
    if meta.lora:
        raise SortedNetError(f"{path!r} holds LoRA adapters; ICT starts from a full fine-tune (objective=sft)")
    return meta


def load_sorted_checkpoint(net: SortedLM, path: str) -> Metadata:
    """Load a checkpoint's weights (file or FSDP directory, read once on this process) into ``net``; returns its
    metadata. The model shapes must match."""
    meta = check_init_checkpoint(net, path)
    if meta.objective != "sft":
        log.warning(f"{path} was trained with objective={meta.objective}; the paper's ICT starts from SFT")
    state, _ = read_training_checkpoint(path)
    prefix = "net."
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith("exit_heads.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise SortedNetError(
            f"{path!r} does not fit model.name_or_path (other weights or shapes); start from the same base model"
        ) from error
    return meta
