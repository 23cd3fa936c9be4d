"""Typed configuration: one dataclass per group, a docstring under each knob.

Hydra composes ``conf/`` on top of these schemas (registered as ``train_schema``), so a mistyped value
or an unknown key fails at composition. Every numeric setting declares its range (:func:`ranged`), and building
a :class:`TrainConfig` checks them all (:func:`check_ranges`): a value out of range fails there too, as one line.
The library receives plain dataclass instances.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from sortednet.errors import SortedNetError

SEED_MAX = 2**32 - 1  # numpy's and Lightning's seeds are unsigned 32-bit


@dataclass(frozen=True)
class Range:
    """The values a numeric setting accepts: ``low``/``high`` bounds (closed unless ``*_open``), whole numbers only
    with ``whole``, ``also`` extra values with a meaning of their own (-1: no limit). With ``others``, values that
    are not numbers (``trainer.devices=auto``, a list of device ids) are left to the setting's user."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    whole: bool = False
    also: tuple = ()
    others: bool = False
    hint: float | None = None
    """The value an error suggests when the field's default cannot (an unset default, a mapping's key)."""

    def admits(self, value: Any) -> bool:
        if value in self.also and not isinstance(value, bool):
            return True
        if isinstance(value, bool) or not isinstance(value, int | float) or (self.whole and not isinstance(value, int)):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        kind = "a whole number" if self.whole else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            bounds = f"in {left}{_text(self.low)}, {_text(self.high)}{right}"
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {_text(self.low)}"
        else:
            bounds = f"{'<' if self.high_open else '<='} {_text(self.high)}"
        return f"{kind} {bounds}" + "".join(f" or {v}" for v in self.also)

    def example(self) -> float:
        if self.hint is not None:
            return self.hint
        if self.low is None:
            return self.high - 1 if self.high_open else self.high
        if not self.low_open:
            return self.low
        return self.low + (1 if self.whole or self.high is None else (self.high - self.low) / 2)


def ranged(default: Any, within: Range) -> Any:
    """A dataclass field whose numeric value must lie ``within`` (a mapping field such as ``trainer`` names its checked
    keys' ranges in its metadata's ``entries``)."""
    return field(default=default, metadata={"range": within})


def _text(number: float) -> str:
    return str(number) if isinstance(number, int) or not float(number).is_integer() else f"{number:g}"


SEED = Range(0, SEED_MAX, whole=True)
POSITIVE = Range(0, low_open=True)
# The checked keys of the optimizer's keyword arguments.
OPTIMIZER_RANGES = {
    "lr": Range(0, low_open=True, hint=2e-5),
    "eps": Range(0, low_open=True, hint=1e-8),
    "weight_decay": Range(0, hint=0.0),
}
# The checked keys of ``trainer`` (Lightning's own arguments, an open mapping); -1 is Lightning's "no limit".
TRAINER_RANGES = {
    "max_steps": Range(1, whole=True, also=(-1,)),
    "max_epochs": Range(1, whole=True, also=(-1,)),
    "devices": Range(1, whole=True, others=True),
    "num_nodes": Range(1, whole=True),
    "accumulate_grad_batches": Range(1, whole=True),
    "gradient_clip_val": Range(0),
}


def check_ranges(config: Any, prefix: str = "") -> None:
    """Refuse, as one line naming the key, the first setting of ``config`` (a dataclass, walked into its nested
    dataclasses) outside the range its field declares (see :class:`Range`); null passes (it means "unset")."""
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.")
        elif "range" in f.metadata and value is not None:
            _check(key, value, f.metadata["range"], f.default)
        for name, within in f.metadata.get("entries", {}).items():
            if isinstance(value, dict) and value.get(name) is not None:
                _check(f"{key}.{name}", value[name], within, None)


def _check(key: str, value: Any, within: Range, default: Any) -> None:
    if within.others and isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    if within.others and not isinstance(value, int | float):
        return
    if not within.admits(value):
        example = default if default is not None and within.admits(default) else within.example()
        raise SortedNetError(f"{key}={value!r} must be {within}; set e.g. {key}={_text(example)}")


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    """Low-rank adapters on the decoder's linears (``sortednet.lora``); rank 0 = full fine-tuning."""

    rank: int = ranged(0, Range(0, whole=True))
    """Adapter rank; 0 trains every weight (the paper), >= 1 trains adapters only (LoRA; QLoRA with nf4)."""
    alpha: float = ranged(16.0, POSITIVE)
    """The update is scaled by alpha / rank."""
    dropout: float = ranged(0.05, Range(0, 1, high_open=True))
    """Dropout on the adapters' input."""
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Names of the decoder layers' linears that get adapters (all attention and MLP projections by default)."""


@dataclass
class ModelConfig:
    name_or_path: str = "embedded"
    """Hub id or local directory of a LLaMA-family causal LM; ``embedded`` is the bundled tiny LLaMA."""
    tokenizer: str | None = None
    """Tokenizer hub id or directory; defaults to ``name_or_path``."""
    dtype: str = "float32"
    """Weights' dtype when loaded: float32, bfloat16 or float16 (mixed precision is ``trainer.precision``)."""
    quantization: str | None = None
    """nf4: load the base weights in 4 bits (bitsandbytes, CUDA only) and train adapters on them (QLoRA;
    needs ``lora.rank`` >= 1). null: weights in ``dtype``."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Low-rank adapters (rank 0: none, every weight trains)."""
    architecture: dict[str, Any] | None = None
    """The checkpoint's Hugging Face config, for building it on the meta device without downloading
    (config tests and memory plans). Training always loads ``name_or_path``."""


@dataclass
class DataConfig:
    path: str = "embedded"
    """Alpaca-format ``.json``/``.jsonl`` file, or a hub id such as ``tatsu-lab/alpaca``; with
    ``data=triviaqa``, a TriviaQA file or hub id (see ``sortednet.data.triviaqa``)."""
    prompt_style: str = "alpaca"
    """Prompt template, from :data:`sortednet.prompts.PROMPT_STYLES`."""
    max_length: int = ranged(512, Range(2, whole=True))
    """Tokens per example; longer examples lose the end of their response."""
    mask_prompt: bool = True
    """Train on response tokens only (the paper); false trains on the prompt too."""
    val_size: float = ranged(0.05, POSITIVE)
    """Validation rows: a fraction (< 1) or a count."""
    max_train_samples: int | None = ranged(None, Range(1, whole=True))
    """Train on at most this many of the rows left after validation (a seeded pick, like Hugging Face's
    ``max_train_samples``); null trains on all of them. The validation rows do not change."""
    batch_size: int = ranged(8, Range(1, whole=True))
    """Examples per micro-batch and device."""
    global_batch_size: int | None = ranged(None, Range(1, whole=True))
    """Sequences per optimizer step over all devices; when set, ``trainer.accumulate_grad_batches`` is
    derived from it (global / (batch_size x devices x nodes), which must be a whole number)."""
    eval_batch_size: int = ranged(32, Range(1, whole=True))
    """Examples per validation batch and device."""
    num_workers: int = ranged(0, Range(0, whole=True))
    """DataLoader worker processes (0 loads in the training process)."""
    seed: int = ranged(42, SEED)
    """Seed of the train/validation split."""


@dataclass
class ObjectiveConfig:
    name: str = "soft"
    """soft (all exits at once) | sft (last exit) | ict (per-exit heads on a frozen SFT model) |
    extracted (the first n layers alone)."""
    init_from: str | None = None
    """ict: the SFT run's checkpoint to start from: its ``last.ckpt`` file, or under FSDP its ``last.ckpt``
    directory (the shards are reassembled on one rank)."""
    layers: int | None = ranged(None, Range(1, whole=True))
    """extracted: how many layers to keep; null takes the middle exit of the exit set."""


@dataclass
class LossConfig:
    """How a step combines its exits (see :mod:`sortednet.schedule`); the defaults are the paper's."""

    weights: Any = field(default="uniform", metadata={"type": "uniform | depth | list of float"})
    """uniform (the paper's mean) | depth (proportional to the layer count) | a list, one per exit."""
    sample: int | None = ranged(None, Range(1, whole=True))
    """Exits per step, the deepest always included (SortedNet's sampling); null uses them all."""
    curriculum: str = "none"
    """none | rotational (a different window of exits each step) | gradual (shallower exits switched on
    one by one over the first ``ramp_fraction`` of training)."""
    ramp_fraction: float = ranged(0.5, Range(0, 1, low_open=True))
    """gradual: the share of training over which the shallower exits are switched on."""
    seed: int = ranged(0, SEED)
    """Seed of the per-step exit sampling (the same on every rank)."""
    distill: float = ranged(0.0, Range(0, 1))
    """Self-distillation, in [0, 1]: each exit below the deepest learns ``(1 - distill) x`` the labels'
    cross-entropy ``+ distill x`` KL(p_deepest || p_exit) against the same step's deepest exit (detached); the
    deepest keeps its cross-entropy. 0 is the paper's SoFT loss; ``loss=distill`` sets 1."""


@dataclass
class StrategyConfig:
    """How training is spread over devices (the ``strategy`` group)."""

    name: str = "single"
    """single (the trainer preset's own ``strategy``, one device by default) | ddp (a full replica per
    device) | fsdp (FSDP2 through Lightning's ModelParallelStrategy: parameters, gradients and optimizer
    states sharded over the devices, one unit per decoder layer)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (any strategy)."""
    save_distributed_checkpoint: bool = True
    """fsdp: each rank writes its shard (a checkpoint directory); false gathers one file on rank 0."""
    allow_single_device: bool = False
    """fsdp: also run on one device (the sharded code path for smoke tests and single-GPU benchmarks; one rank
    holds everything, so it saves no memory)."""


@dataclass
class ThroughputConfig:
    window: int = ranged(20, Range(1, whole=True))
    """Steps per sliding window of the logged tokens/s, TFLOP/s and MFU."""
    peak_tflops: float | None = ranged(None, POSITIVE)
    """The device's peak TFLOP/s for MFU; null uses Lightning's table (CUDA GPUs), none on CPU."""


@dataclass
class EvalConfig:
    num_generate: int = ranged(100, Range(0, whole=True))
    """Held-out validation examples answered greedily at each exit for the final table (0 to skip)."""
    max_new_tokens: int = ranged(32, Range(1, whole=True))
    """The most tokens of each greedy answer in the final table."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to fine-tune (the ``model`` group)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The instruction data and its batches (the ``data`` group)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """What is trained: SoFT or a baseline (the ``objective`` group)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """How each step weights and picks its exits (the ``loss`` group)."""
    exits: Any = field(default="every_2", metadata={"type": "list of int | all | last | every_K | paper"})
    """Exit set: a list of layer counts such as [4, 8], or all | last | every_K | paper."""
    optimizer: Any = field(
        default=None,
        metadata={"type": "mapping | null", "entries": OPTIMIZER_RANGES},
    )
    """A ``_partial_`` optimizer (``_target_`` + kwargs) that receives the parameters."""
    warmup_steps: int = ranged(0, Range(0, whole=True))
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = ranged(0.0, Range(0, 1))
    """Final learning rate of the cosine schedule as a fraction of the peak."""
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    """How training is spread over devices (the ``strategy`` group)."""
    trainer: dict[str, Any] = field(default_factory=dict, metadata={"entries": TRAINER_RANGES})
    """Keyword arguments of ``lightning.Trainer``, plus ``compile``: true runs every decoder layer through
    ``torch.compile`` (the multi-exit loss stays eager)."""
    logger: dict[str, Any] = field(default_factory=dict)
    """``kind`` (wandb | csv | none) + that logger's settings."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """The per-exit table printed at the end of a run."""
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    """The logged tokens/s, TFLOP/s and MFU."""
    seed: int = ranged(42, SEED)
    """Seed of everything random in a run (initialisation of new heads, shuffling, dropout)."""
    ckpt_path: str | None = None
    """Resume from this Lightning checkpoint (model, optimizer, scheduler and step)."""
    cache_dir: str = "~/.cache/sortednet"
    """Where the embedded assets and tokenized data sets are kept."""
    run_dir: str = "."
    """This run's output directory (Hydra sets it)."""

    def __post_init__(self) -> None:
        check_ranges(self)  # at composition: OmegaConf.to_object builds this dataclass from Hydra's config
