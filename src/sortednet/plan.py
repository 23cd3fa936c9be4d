"""`python -m sortednet.plan [training overrides] [plan.KEY=VALUE ...]`: per-GPU memory and step time of a run
under FSDP over N devices, from the real config and the model built on the meta device (no weights).

Every argument but the ``plan.*`` keys is a training override, exactly as ``python -m sortednet.train`` takes
it (``experiment=soft_13b trainer.devices=8 data.batch_size=4``), composed from the same configs.

Memory per GPU (bytes; P parameters, P_t trainable, N devices):
  params      P x master bytes / N (the model's dtype: fp32 master weights under bf16-mixed)
  gathered    the root unit (embeddings, norm, heads; kept gathered all step) + 2 decoder layers (the one
              computing and the one prefetched), in the compute dtype
  grads       P_t x master bytes / N
  optimizer   AdamW: 2 moments x P_t / N, in the master dtype (fp32: 8 bytes/param); adamw8bit: 2 bytes/param
  activations Korthikanti et al. 2022 (16-bit activations, no tensor/sequence parallelism), per layer
              s*b*h*(34 + 5*a*s/h); with per-layer checkpointing: 2*s*b*h per layer kept + one layer's full
              activations during its recomputation (b micro-batch per device, s tokens, h width, a heads)
  loss        the multi-exit loss (sortednet.loss): one chunk of fp32 logits (<= 64 MiB) + one V x D fp32
              gradient buffer + |B| x n_labels x D rows and their gradients, compute dtype
Step time: analytic FLOPs of the step (sortednet.flops) over N x peak x MFU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from sortednet import cli
from sortednet.config import TrainConfig
from sortednet.errors import SortedNetError
from sortednet.flops import train_step_flops
from sortednet.hub import DTYPES, causal_lm_from_config, load_config
from sortednet.loss import CHUNK_ELEMENTS
from sortednet.objectives import apply_objective, check_objective, train_exits
from sortednet.tables import markdown_table
from sortednet.training.composition import compose_checked, training_options
from sortednet.training.preflight import check_settings
from sortednet.training.strategy import world_size

GIB = 1024**3
CARDS = {"8x80GB": 80, "8x40GB": 40, "8x32GB (paper, V100)": 32}


@dataclass
class PlanConfig:
    mfu: float = 0.4
    """Model FLOPs utilisation assumed for the step time."""
    peak_tflops: float = 312.0
    """Peak TFLOP/s of one GPU at the compute dtype (A100 bf16: 312)."""
    response_fraction: float = 0.5
    """Share of a sequence's tokens that are response labels (the loss rows)."""


@dataclass
class PlanArgs:
    """The command line's own keys (every other argument is a training override)."""

    plan: PlanConfig = field(default_factory=PlanConfig)
    """What the plan assumes beyond the training config."""


def plan(cfg, settings: PlanConfig) -> dict:
    """The numbers of the plan: memory terms in GiB per GPU, tokens per step, step time."""
    # Without model.architecture, the config of model.name_or_path (a directory, hub id or .gguf; no weights read).
    architecture = cfg.model.architecture or load_config(cfg.model.name_or_path, cfg.cache_dir)
    check_objective(cfg.objective, cfg.model.lora)
    causal_lm = causal_lm_from_config(architecture, cfg.model.dtype, device="meta")
    net, exit_set = apply_objective(causal_lm, cfg.objective, cfg.exits, cfg.model.lora)
    config = net.lm.config
    n = world_size(cfg.trainer)
    precision = str(cfg.trainer.get("precision", "32-true"))
    master = DTYPES[cfg.model.dtype].itemsize
    compute = 2 if precision.startswith(("bf16", "16")) else 4
    params = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    layer = sum(p.numel() for p in net.decoder.layers[0].parameters())
    root = params - layer * net.num_layers
    eight_bit = "8bit" in str(cfg.optimizer.get("_target_", ""))
    state_bytes = 2 if eight_bit else 2 * master
    b, s = cfg.data.batch_size, cfg.data.max_length
    h, a, L = config.hidden_size, config.num_attention_heads, net.num_layers
    layer_act = s * b * h * (34 + 5 * a * s / h)
    labels = int(b * s * settings.response_fraction)
    exits = len(train_exits(cfg.objective.name, exit_set))
    chunk_rows = min(CHUNK_ELEMENTS // config.vocab_size, labels)
    loss = chunk_rows * config.vocab_size * 4 + config.vocab_size * h * 4 + 2 * exits * labels * h * compute
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    if cfg.data.global_batch_size:
        accumulate = cfg.data.global_batch_size // (b * n)
    sequences = b * n * accumulate
    tokens = sequences * s
    flops = train_step_flops(config, exits, tokens, int(tokens * settings.response_fraction), s)
    terms = {
        "params": params * master / n,
        "gathered": (root + 2 * layer) * compute,
        "grads": trainable * master / n,
        "optimizer": trainable * state_bytes / n,
        "activations": L * layer_act,
        "activations (checkpointed)": L * 2 * s * b * h + layer_act,
        "multi-exit loss": loss,
    }
    return {
        "gib": {k: v / GIB for k, v in terms.items()},
        "params": params,
        "trainable": trainable,
        "devices": n,
        "micro_batch": b,
        "seq": s,
        "sequences": sequences,
        "tokens": tokens,
        "step_s": flops / (n * settings.peak_tflops * 1e12 * settings.mfu),
        "eight_bit": eight_bit,
        "precision": precision,
    }


def totals(result: dict) -> tuple[float, float]:
    g = result["gib"]
    common = g["params"] + g["gathered"] + g["grads"] + g["optimizer"] + g["multi-exit loss"]
    return common + g["activations"], common + g["activations (checkpointed)"]


def verdicts(result: dict) -> dict[str, str]:
    """Per card size: fits without checkpointing, only with it, or not at all (90% of the card usable)."""
    full, checkpointed = totals(result)
    out = {}
    for card, size in CARDS.items():
        usable = 0.9 * size
        out[card] = (
            "fits" if full <= usable else "fits with activation checkpointing" if checkpointed <= usable else "no"
        )
    return out


def format_plan(result: dict, settings: PlanConfig) -> str:
    full, checkpointed = totals(result)
    gib = {**result["gib"], "total, no checkpointing": full, "total, activation checkpointing": checkpointed}
    return "\n".join(
        [
            f"parameters {result['params']:,} (trainable {result['trainable']:,}); FSDP over {result['devices']} "
            f"GPUs, precision {result['precision']}, optimizer {'AdamW 8-bit' if result['eight_bit'] else 'AdamW'}; "
            f"micro-batch {result['micro_batch']} x {result['seq']} tokens",
            "",
            markdown_table(("per GPU", "GiB"), [(term, f"{size:.2f}") for term, size in gib.items()]),
            "",
            f"tokens per step: {result['tokens']:,} ({result['sequences']} sequences x {result['seq']}, padded bound)",
            f"step time at MFU {settings.mfu} of {settings.peak_tflops:g} TFLOP/s per GPU: {result['step_s']:.1f} s",
            "",
            markdown_table(("cards", "verdict (90% of memory usable)"), verdicts(result).items()),
        ]
    )


def check_plan(settings: PlanConfig) -> None:
    for key in ("mfu", "response_fraction"):
        if not 0 < getattr(settings, key) <= 1:
            raise SortedNetError(f"plan.{key}={getattr(settings, key)} must be in (0, 1]; e.g. plan.{key}=0.4")
    if not settings.peak_tflops > 0:
        raise SortedNetError(f"plan.peak_tflops={settings.peak_tflops} must be > 0 (A100 bf16: plan.peak_tflops=312)")


def help_text() -> str:
    groups = "\n".join(f"  {name}={'|'.join(options)}" for name, options in training_options().items())
    return (
        f"{cli.usage(__doc__, PlanArgs)}\n\ntraining groups:\n{groups}\n\n"
        f"training keys (as python -m sortednet.train takes them):\n{cli.describe(TrainConfig)}"
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    own = [a.partition("=")[0].split(".")[0] == "plan" for a in args]

    def run() -> None:
        settings = cli.parse([a for a, mine in zip(args, own, strict=True) if mine], PlanArgs).plan
        check_plan(settings)
        cfg = compose_checked([a for a, mine in zip(args, own, strict=True) if not mine], "sortednet.plan")
        check_settings(cfg)
        print(format_plan(plan(cfg, settings), settings))

    return cli.guarded(run, args, help_text)


if __name__ == "__main__":
    sys.exit(main())
