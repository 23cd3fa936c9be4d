"""Typed configuration: one dataclass per group, a docstring under each knob.

Hydra composes ``conf/`` on top of these schemas (registered as ``train_schema``), so a mistyped value
or an unknown key fails at composition. The library receives plain dataclass instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    """Low-rank adapters on the decoder's linears (``sortednet.lora``); rank 0 = full fine-tuning."""

    rank: int = 0
    """Adapter rank; 0 trains every weight (the paper), >= 1 trains adapters only (LoRA; QLoRA with nf4)."""
    alpha: float = 16.0
    """The update is scaled by alpha / rank."""
    dropout: float = 0.05
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
    """Prompt template, from :data:`sortednet.data.prompts.PROMPT_STYLES`."""
    max_length: int = 512
    """Tokens per example; longer examples lose the end of their response."""
    mask_prompt: bool = True
    """Train on response tokens only (the paper); false trains on the prompt too."""
    val_size: float = 0.05
    """Validation rows: a fraction (< 1) or a count."""
    max_train_samples: int | None = None
    """Train on at most this many of the rows left after validation (a seeded pick, like Hugging Face's
    ``max_train_samples``); null trains on all of them. The validation rows do not change."""
    batch_size: int = 8
    """Examples per micro-batch and device."""
    global_batch_size: int | None = None
    """Sequences per optimizer step over all devices; when set, ``trainer.accumulate_grad_batches`` is
    derived from it (global / (batch_size x devices x nodes), which must be a whole number)."""
    eval_batch_size: int = 32
    """Examples per validation batch and device."""
    num_workers: int = 0
    """DataLoader worker processes (0 loads in the training process)."""
    seed: int = 42
    """Seed of the train/validation split."""


@dataclass
class ObjectiveConfig:
    name: str = "soft"
    """soft (all exits at once) | sft (last exit) | ict (per-exit heads on a frozen SFT model) |
    extracted (the first n layers alone)."""
    init_from: str | None = None
    """ict: the SFT run's checkpoint to start from: its ``last.ckpt`` file, or under FSDP its ``last.ckpt``
    directory (the shards are reassembled on one rank)."""
    layers: int | None = None
    """extracted: how many layers to keep; null takes the middle exit of the exit set."""


@dataclass
class LossConfig:
    """How a step combines its exits (see :mod:`sortednet.schedule`); the defaults are the paper's."""

    weights: Any = field(default="uniform", metadata={"type": "uniform | depth | list of float"})
    """uniform (the paper's mean) | depth (proportional to the layer count) | a list, one per exit."""
    sample: int | None = None
    """Exits per step, the deepest always included (SortedNet's sampling); null uses them all."""
    curriculum: str = "none"
    """none | rotational (a different window of exits each step) | gradual (shallower exits switched on
    one by one over the first ``ramp_fraction`` of training)."""
    ramp_fraction: float = 0.5
    """gradual: the share of training over which the shallower exits are switched on."""
    seed: int = 0
    """Seed of the per-step exit sampling (the same on every rank)."""
    distill: float = 0.0
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
    window: int = 20
    """Steps per sliding window of the logged tokens/s, TFLOP/s and MFU."""
    peak_tflops: float | None = None
    """The device's peak TFLOP/s for MFU; null uses Lightning's table (CUDA GPUs), none on CPU."""


@dataclass
class EvalConfig:
    num_generate: int = 100
    """Held-out validation examples answered greedily at each exit for the final table (0 to skip)."""
    max_new_tokens: int = 32
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
    optimizer: Any = field(default=None, metadata={"type": "mapping | null"})
    """A ``_partial_`` optimizer (``_target_`` + kwargs) that receives the parameters."""
    warmup_steps: int = 0
    """Linear warm-up steps before the cosine decay."""
    min_lr_ratio: float = 0.0
    """Final learning rate of the cosine schedule as a fraction of the peak."""
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    """How training is spread over devices (the ``strategy`` group)."""
    trainer: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``lightning.Trainer``, plus ``compile``: true runs every decoder layer through
    ``torch.compile`` (the multi-exit loss stays eager)."""
    logger: dict[str, Any] = field(default_factory=dict)
    """``kind`` (wandb | csv | none) + that logger's settings."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """The per-exit table printed at the end of a run."""
    throughput: ThroughputConfig = field(default_factory=ThroughputConfig)
    """The logged tokens/s, TFLOP/s and MFU."""
    seed: int = 42
    """Seed of everything random in a run (initialisation of new heads, shuffling, dropout)."""
    ckpt_path: str | None = None
    """Resume from this Lightning checkpoint (model, optimizer, scheduler and step)."""
    cache_dir: str = "~/.cache/sortednet"
    """Where the embedded assets and tokenized data sets are kept."""
    run_dir: str = "."
    """This run's output directory (Hydra sets it)."""
