"""The sorted view of a Hugging Face decoder-only causal LM.

An *exit* is a layer count ``e`` in ``[1, L]``: sub-model ``e`` is the first ``e`` decoder layers
followed by the model's own final norm and LM head. Exit ``L`` is the model itself. Intermediate
classifier tuning (ICT) adds one untied head per exit ``< L``; they live here, beside the shared one.

Nothing in this file knows about Lightning or Hydra.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sortednet.errors import SortedNetError
from sortednet.loss import exit_metrics, label_positions, multi_exit_loss, self_distillation_loss

PAPER_13B_EXITS = [12, 16, 20, 24, 28, 32, 36, 40]


def resolve_exits(spec: str | int | Sequence[int], num_layers: int) -> list[int]:
    """Turn an exit-set spec into a validated, sorted list of layer counts.

    ``spec`` is an explicit list (``[4, 8]``) or a named set: ``all`` (every layer), ``last`` (just L),
    ``every_K`` (K, 2K, ..., L) or ``paper`` (the Sorted LLaMA paper's {12, 16, ..., 40}; needs L = 40).
    """
    if isinstance(spec, str):
        name = spec.strip()
        if name == "all":
            return list(range(1, num_layers + 1))
        if name == "last":
            return [num_layers]
        if name == "paper":
            if num_layers != 40:
                raise SortedNetError(
                    f"exits=paper is the paper's set for a 40-layer model, this one has {num_layers}; "
                    f"use exits=every_K or an explicit list"
                )
            return list(PAPER_13B_EXITS)
        match = re.fullmatch(r"every_(\d+)", name)
        if match and int(match.group(1)) >= 1:
            step = int(match.group(1))
            return sorted(set(range(step, num_layers + 1, step)) | {num_layers})
        raise SortedNetError(
            f"unknown exit set {spec!r}; use a list such as exits=[4,8] or one of all, last, every_K, paper"
        )
    if isinstance(spec, int):
        spec = [spec]
    return validate_exits(list(spec), num_layers)


def validate_exits(exits: Sequence[int], num_layers: int) -> list[int]:
    """Check that an exit set is sorted, unique, within [1, L] and contains L."""
    exits = list(exits)
    if not exits:
        raise SortedNetError(f"the exit set is empty; give at least the last layer, e.g. exits=[{num_layers}]")
    if not all(isinstance(e, int) and not isinstance(e, bool) for e in exits):
        raise SortedNetError(f"exits must be whole layer counts, got {exits}")
    out_of_range = [e for e in exits if not 1 <= e <= num_layers]
    if out_of_range:
        raise SortedNetError(
            f"exits {out_of_range} are outside [1, {num_layers}] (the model has {num_layers} layers); "
            f"fix the exits list"
        )
    if len(set(exits)) != len(exits):
        raise SortedNetError(f"exits {exits} contain duplicates; list each layer count once")
    if exits != sorted(exits):
        raise SortedNetError(f"exits {exits} are not sorted; write them in increasing order: {sorted(exits)}")
    if exits[-1] != num_layers:
        raise SortedNetError(
            f"exits {exits} do not contain the last layer {num_layers}; the full model is always an exit, "
            f"add {num_layers}"
        )
    return exits


def _decoder_parts(causal_lm: nn.Module) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
    """The decoder stack, its layer list and its final norm, or a clear error for other architectures."""
    decoder = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    if not isinstance(layers, nn.ModuleList) or norm is None:
        raise SortedNetError(
            f"{type(causal_lm).__name__} has no decoder with `.layers` and `.norm`; sortednet supports "
            f"LLaMA-family causal LMs (LLaMA, Mistral, Qwen2, ...)"
        )
    return decoder, layers, norm


def truncate_layers_(causal_lm: nn.Module, num_layers: int) -> nn.Module:
    """Cut a causal LM down to its first ``num_layers`` decoder layers, in place (extracted fine-tuning)."""
    decoder, layers, _ = _decoder_parts(causal_lm)
    validate_exits([num_layers], num_layers)  # a positive count
    if num_layers > len(layers):
        raise SortedNetError(f"cannot keep {num_layers} layers of a {len(layers)}-layer model; pick n <= {len(layers)}")
    decoder.layers = nn.ModuleList(list(layers)[:num_layers])
    _set_layer_count(causal_lm.config, num_layers)
    return causal_lm


def _set_layer_count(config, num_layers: int) -> None:
    config.num_hidden_layers = num_layers
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        config.layer_types = list(layer_types)[:num_layers]


def _module_name(root: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in root.named_modules(remove_duplicate=False) if module is target)


class SortedLM(nn.Module):
    """A causal LM seen as nested sub-models, one per exit.

    ``exit_heads`` holds the ICT heads (``None`` unless :meth:`add_exit_heads` was called); every exit
    without its own head uses the model's LM head.
    """

    def __init__(self, causal_lm: nn.Module):
        super().__init__()
        _decoder_parts(causal_lm)  # fail early on unsupported architectures
        self.lm = causal_lm
        self.exit_heads: nn.ModuleDict | None = None

    # Properties, not attributes: registering the decoder twice would duplicate its state_dict keys.
    @property
    def decoder(self) -> nn.Module:
        return self.lm.get_decoder()

    @property
    def norm(self) -> nn.Module:
        return self.decoder.norm

    @property
    def num_layers(self) -> int:
        return len(self.decoder.layers)

    @property
    def lm_head(self) -> nn.Linear:
        return self.lm.get_output_embeddings()

    def head(self, exit_: int) -> nn.Linear:
        """The LM head that exit ``exit_`` uses."""
        if self.exit_heads is not None and str(exit_) in self.exit_heads:
            return self.exit_heads[str(exit_)]
        return self.lm_head

    def add_exit_heads(self, exits: Sequence[int]) -> None:
        """One new head per exit below L, initialised from (and untied from) the shared LM head."""
        shared = self.lm_head
        heads = {}
        for e in exits:
            if e == self.num_layers:
                continue
            head = nn.Linear(shared.in_features, shared.out_features, bias=shared.bias is not None)
            head.to(device=shared.weight.device, dtype=shared.weight.dtype)
            with torch.no_grad():
                head.weight.copy_(shared.weight)
                if shared.bias is not None:
                    head.bias.copy_(shared.bias)
            heads[str(e)] = head
        self.exit_heads = nn.ModuleDict(heads)

    def exit_hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        exits: Sequence[int],
        positions: torch.Tensor | None = None,
    ) -> dict[int, torch.Tensor]:
        """Normed hidden states at each exit, from one pass through the decoder.

        ``[batch, seq, hidden]`` each, or ``[n, hidden]`` rows where the boolean ``positions`` mask
        (``[batch, seq]``) is set — selected before the norm, so nothing is normed twice or in vain.
        Hugging Face's ``hidden_states`` tuple holds the embeddings at index 0 and the output of layer
        ``e`` at index ``e``; the last entry is already normed, the others are not.
        """
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        states = out.hidden_states
        pick = (lambda h: h) if positions is None else (lambda h: h[positions])  # noqa: E731
        return {e: pick(states[e]) if e == self.num_layers else self.norm(pick(states[e])) for e in exits}

    def exit_losses(self, input_ids, attention_mask, labels, exits: Sequence[int], weights=None, distill=0.0):
        """The multi-exit loss of a batch and its per-exit cross-entropies: one pass through the decoder, then every
        exit's head at the label positions (:func:`sortednet.loss.multi_exit_loss`, or with ``distill`` > 0
        :func:`sortednet.loss.self_distillation_loss`). Under FSDP2 it is registered as a forward method of the
        root unit, so the root is gathered before it and reduced after its backward.

        ICT's decoder is frozen (requires_grad off), so grad mode records no graph through it; it stays on
        there, as FSDP2 sets up gradient reduction only for a grad-mode forward whose output requires grad.
        """
        positions, targets = label_positions(labels)
        rows = self.exit_hidden_states(input_ids, attention_mask, exits, positions)
        if distill and len(exits) > 1:
            total, losses, _ = self_distillation_loss(rows, self.lm_head, targets, weights, distill)
            return total, losses
        return multi_exit_loss(rows, {e: self.head(e) for e in exits}, targets, weights)

    def exit_metrics(self, input_ids, attention_mask, labels, exits: Sequence[int]):
        """Validation, from one pass through the decoder and one through each exit's head: each exit's
        cross-entropy at the label positions, and how each exit below the deepest agrees with it there
        (:func:`sortednet.loss.exit_metrics`: sums of the expected acceptance and of greedy agreement). Registered
        as an FSDP2 forward method like ``exit_losses``."""
        positions, targets = label_positions(labels)
        rows = self.exit_hidden_states(input_ids, attention_mask, exits, positions)
        return exit_metrics(rows, {e: self.head(e) for e in exits}, targets)

    def exit_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, exits: Sequence[int]
    ) -> dict[int, torch.Tensor]:
        """Full logits per exit. For evaluation and tests; training uses :mod:`sortednet.loss` instead."""
        hidden = self.exit_hidden_states(input_ids, attention_mask, exits)
        return {e: self.head(e)(h) for e, h in hidden.items()}

    @contextlib.contextmanager
    def at_exit(self, exit_: int) -> Iterator[nn.Module]:
        """Temporarily turn the wrapped model into sub-model ``exit_`` (for ``generate`` with a KV cache)."""
        validate_exits([exit_], exit_)
        if exit_ > self.num_layers:
            raise SortedNetError(f"exit {exit_} is beyond the model's {self.num_layers} layers")
        full_layers, full_head = self.decoder.layers, self.lm_head
        config = self.lm.config
        saved = {k: getattr(config, k) for k in ("num_hidden_layers", "layer_types") if hasattr(config, k)}
        try:
            self.decoder.layers = nn.ModuleList(list(full_layers)[:exit_])
            _set_layer_count(config, exit_)
            self.lm.set_output_embeddings(self.head(exit_))
            yield self.lm
        finally:
            self.decoder.layers = full_layers
            self.lm.set_output_embeddings(full_head)
            for key, value in saved.items():
                setattr(config, key, value)

    def submodel(self, exit_: int, dtype: torch.dtype | None = None) -> nn.Module:
        """A standalone causal LM (on the CPU) equal to exit ``exit_``: its first layers, the norm and its head;
        in ``dtype`` if given, else the model's own."""
        # transformers loads lazily: every command imports this module, and its --help should not wait for it
        from transformers import AutoModelForCausalLM

        if not 1 <= exit_ <= self.num_layers:
            raise SortedNetError(f"exit {exit_} is outside [1, {self.num_layers}]")
        head = self.head(exit_)
        own_head = head is not self.lm_head
        config = copy.deepcopy(self.lm.config)
        _set_layer_count(config, exit_)
        if own_head:
            config.tie_word_embeddings = False  # an ICT head is its own matrix, not the embeddings
        layers_name = _module_name(self.lm, self.decoder.layers)
        head_name = _module_name(self.lm, self.lm_head)
        dropped = tuple(f"{layers_name}.{i}." for i in range(exit_, self.num_layers))
        state = {k: v for k, v in self.lm.state_dict().items() if not k.startswith(dropped)}
        if own_head:
            state[f"{head_name}.weight"] = head.weight
            if head.bias is not None:
                state[f"{head_name}.bias"] = head.bias
        with torch.device("cpu"):
            sub = AutoModelForCausalLM.from_config(config, dtype=self.lm_head.weight.dtype)
        sub.load_state_dict(state, strict=True)
        if dtype is not None:
            sub.to(dtype)
        return sub.eval()
