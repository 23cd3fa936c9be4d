"""`python -m sortednet.bench train|generate [key=value ...]`: what SoFT costs to train, and what its exits buy
at decoding time.

- ``bench train``: the cost of SoFT against SFT and against the full-logits recipe, per step;
- ``bench generate``: every decoding mode of a checkpoint against full-model greedy: speed and quality.

``python -m sortednet.bench train --help`` (or ``generate --help``) lists the keys of each.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch

from sortednet import cli
from sortednet.benchmarks import llamacpp
from sortednet.benchmarks.generate import (
    bench_generate,
    bench_generate_batches,
    format_batch_table,
    format_generate_table,
    measured_and_calibration_rows,
)
from sortednet.benchmarks.train import IMPLS, OPTIMIZERS, PRECISIONS, SHAPES, bench_train, format_table
from sortednet.errors import SortedNetError
from sortednet.inference.load import load_sorted, prompt_style_of, resolve_device
from sortednet.prompts import encode_prompts


@dataclass
class BenchTrainConfig:
    """`python -m sortednet.bench train [key=value ...]`: the cost of SoFT against SFT and against the full-logits
    recipe.

    Every row runs in a fresh subprocess (so its peak memory is its own), builds a randomly initialised LLaMA of
    the given shape, and times training steps (forward, backward and the optimizer) over a fixed batch whose first
    half of every row is prompt (masked) and second half response. With ``repeats`` > 1 every row runs that many
    times, the rows interleaved (all rows once, then all again, in reverse order), and each column is the median
    over the repeats of that repeat's figure, so one noisy moment of the machine cannot move a ratio.

    Implementations (``impls``):
    - ``sft``: the last exit only, head at label positions (``sortednet.loss``);
    - ``soft``: ``sortednet.loss`` over k exits (the paper's SoFT);
    - ``sampled`` / ``rotational``: 2 of the k exits a step, the deepest always in (``loss=sampled`` and
      ``loss=rotational``; rows for k >= 3 only);
    - ``soft-naive``: full ``[batch, seq, vocab]`` logits per exit, then cross-entropy, averaged — the way
      most early-exit recipes do it, kept here as the reference.
    """

    shapes: list[str] = field(default_factory=lambda: ["llama-32k", "body-heavy"])
    """Model shapes to time: llama-32k (width 512, 8 layers, 32,000-token vocabulary: head-heavy, like small
    LLaMAs) | body-heavy (the same body, a 2,048-token vocabulary) | smollm2 (SmolLM2-135M: 30 layers, width 576,
    9/3 heads, 49,152-token vocabulary, tied embeddings) | tiny (seconds, for tests)."""
    exits: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Exit-set sizes k: SoFT over k exits spread evenly over the depth, the last one included."""
    impls: list[str] = field(default_factory=lambda: ["sft", "soft", "sampled", "rotational", "soft-naive"])
    """The losses timed: sft | soft | sampled | rotational | soft-naive (see above)."""
    precision: list[str] = field(default_factory=lambda: ["32-true"])
    """Lightning's precision names, one table block each: 32-true | bf16-mixed (autocast over fp32 weights, what
    ``trainer.precision=bf16-mixed`` trains with) | bf16-true (bf16 weights)."""
    optimizer: str = "adamw"
    """adamw: each timed step includes AdamW's update (a training step); none: forward + backward only."""
    repeats: int = 1
    """How many times every row runs, interleaved with the others; the table shows medians over the repeats."""
    batch: int = 4
    """Rows per step."""
    seq: int = 256
    """Tokens per row: the first half prompt (masked), the second half response labels."""
    steps: int = 5
    """Timed steps; their median is reported."""
    warmup: int = 2
    """Untimed steps before them."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda | cuda:N."""
    peak_tflops: float | None = None
    """The device's peak TFLOP/s, for the MFU column; null: no MFU."""


@dataclass
class BenchGenerateConfig:
    """`python -m sortednet.bench generate ckpt=PATH [key=value ...]`: every decoding mode of a checkpoint against
    full-model greedy on the same prompts, one at a time: speed and quality (exact match, or ROUGE-L with
    data=FILE). With batch_size=[1,4,16]: per batch size, HF generate, plain batched greedy, speculative and
    dynamic."""

    ckpt: str = ""
    """A .ckpt written by sortednet.train, or a directory written by sortednet.export or sortednet.consolidate."""
    prompts: int = 60
    """Prompts measured (and as many calibrated on)."""
    data: str | None = None
    """An Alpaca .json/.jsonl of held-out rows: measure rows [0, prompts), calibrate on the next ones, score
    ROUGE-L against their outputs; null: fresh rows of the embedded tasks, exact match."""
    max_new_tokens: int = 24
    """The most tokens generated per answer."""
    draft_exits: list[int] | None = None
    """Draft exits of the speculative rows; null: every exit below L."""
    thresholds: list[float] | None = None
    """Dynamic-exit thresholds, one per exit below L; null: calibrated on the calibration rows."""
    max_drop: float = 0.01
    """Calibration's quality budget (exact match, or ROUGE-L with data)."""
    threads: int | None = None
    """torch's CPU threads; null: torch's default."""
    ignore_eos: bool = False
    """true: always generate max_new_tokens (steady-state decoding)."""
    batch_size: list[int] | None = None
    """A sweep of batch sizes such as [1,4,16] (HF generate, plain batched greedy, speculative, dynamic);
    null: the modes one prompt at a time."""
    llamacpp: list[str] | None = None
    """GGUF dtypes of the llama.cpp rows, e.g. [q8_0] or [float32,q8_0]: every exit written as a GGUF file and
    decoded by llama.cpp at batch 1 (needs the llamacpp extra), then llama.cpp's speculative decoding with the
    draft_exits as drafts; null: no llama.cpp rows."""
    quality: str | None = None
    """An evaluation directory (sortednet.evaluate's out, with loss.csv / generate.csv) whose held-out loss and
    ROUGE-L of this checkpoint (name: the checkpoint's file stem, or quality_name) fill the llama.cpp table."""
    quality_name: str | None = None
    """The checkpoint's name in the quality directory (the names= given to sortednet.evaluate)."""
    pytorch: bool = True
    """false: the llama.cpp rows only (no PyTorch decoding modes)."""


def check_train(cfg: BenchTrainConfig) -> None:
    for key, given, known in (("shapes", cfg.shapes, SHAPES), ("impls", cfg.impls, IMPLS),
                              ("precision", cfg.precision, PRECISIONS)):  # fmt: skip
        unknown = [v for v in given if v not in known]
        if unknown or not given:
            first = next(iter(known))
            raise SortedNetError(f"{key}={given}: pick from {', '.join(known)}, e.g. {key}=[{first}]")
    if not cfg.exits or any(k < 1 for k in cfg.exits):
        raise SortedNetError(f"exits={cfg.exits} takes exit-set sizes >= 1, e.g. exits=[1,4]")
    if cfg.optimizer not in OPTIMIZERS:
        raise SortedNetError(f"unknown optimizer={cfg.optimizer!r}; use {' or '.join(OPTIMIZERS)}")
    for key in ("batch", "seq", "steps", "repeats"):
        if getattr(cfg, key) < 1:
            raise SortedNetError(f"{key}={getattr(cfg, key)} must be at least 1")
    if cfg.warmup < 0:
        raise SortedNetError(f"warmup={cfg.warmup} must be 0 or more")


def check_generate(cfg: BenchGenerateConfig) -> None:
    if not cfg.ckpt:
        raise SortedNetError("no checkpoint given; pass ckpt=PATH.ckpt (written by sortednet.train) or ckpt=EXPORT_DIR")
    if cfg.prompts < 1 or cfg.max_new_tokens < 1:
        raise SortedNetError(f"prompts={cfg.prompts} and max_new_tokens={cfg.max_new_tokens} must be at least 1")
    if cfg.batch_size is not None and (not cfg.batch_size or any(b < 1 for b in cfg.batch_size)):
        raise SortedNetError(f"batch_size={cfg.batch_size} takes batch sizes >= 1, e.g. batch_size=[1,4,16]")
    if cfg.llamacpp is not None:
        llamacpp.check_dtypes(cfg.llamacpp)
    elif not cfg.pytorch:
        raise SortedNetError("pytorch=false leaves no rows; add llamacpp=[q8_0] or drop pytorch=false")


def _generate_header(args, argv: list[str]) -> str:
    source = args.data or "the embedded tasks"
    return (f"# python -m sortednet.bench {' '.join(argv)}  ({date.today()}, cpu, {torch.get_num_threads()} threads, "
            f"{args.prompts} prompts of {source}, greedy, <= {args.max_new_tokens} new tokens)")  # fmt: skip


def run_train(cfg: BenchTrainConfig, argv: list[str]) -> None:
    check_train(cfg)
    rows = bench_train(cfg)
    step = "forward + backward + AdamW" if cfg.optimizer == "adamw" else "forward + backward"
    print(f"# python -m sortednet.bench {' '.join(argv)}  ({date.today()}, {resolve_device(cfg.device)}, "
          f"batch {cfg.batch} x {cfg.seq} tokens, half of them labels, {step}; medians of {cfg.repeats} "
          f"interleaved repeat(s) of {cfg.steps} timed steps; × fp32 SoFT: speed over 32-true soft at "
          f"{max(cfg.exits)} exits)")  # fmt: skip
    print(format_table(rows, with_mfu=cfg.peak_tflops is not None))


def run_llamacpp(cfg: BenchGenerateConfig) -> None:
    """The llama.cpp tables (``llamacpp=[...]``): every exit per dtype, then speculative decoding in llama.cpp."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    net, tokenizer, meta = load_sorted(cfg.ckpt)
    rows = measured_and_calibration_rows(cfg.data, cfg.prompts)[0]
    prompts = encode_prompts(tokenizer, prompt_style_of(meta, tokenizer), rows)
    name = cfg.quality_name or Path(cfg.ckpt).stem
    quality = llamacpp.read_quality(cfg.quality, name)
    exits, threads = meta.exits, cfg.threads
    new_tokens = cfg.max_new_tokens
    table = llamacpp.deployment_rows(net, tokenizer, exits, prompts, new_tokens, cfg.llamacpp, threads, quality)
    print(f"# llama.cpp, batch 1, greedy, {new_tokens} tokens per prompt (end of sequence ignored), {len(prompts)} "
          f"prompts, {threads or 'all'} threads; quality: {cfg.quality or 'none given'} ({name})")  # fmt: skip
    print(llamacpp.format_deployment(table))
    drafts = cfg.draft_exits or exits[:-1]
    dtype = cfg.llamacpp[-1]
    spec = llamacpp.speculative_rows(net, tokenizer, exits, drafts, prompts, cfg.max_new_tokens, dtype, threads)
    print(llamacpp.format_speculative(spec, dtype))


def run_generate(cfg: BenchGenerateConfig, argv: list[str]) -> None:
    check_generate(cfg)
    cli.quiet_transformers()
    if cfg.llamacpp:
        run_llamacpp(cfg)
    if not cfg.pytorch:
        return
    if cfg.batch_size:
        rows = bench_generate_batches(cfg)
        print(_generate_header(cfg, argv))
        print(format_batch_table(rows))
        return
    rows, _ = bench_generate(cfg)
    print(_generate_header(cfg, argv))
    print(format_generate_table(rows, "rouge_l" if cfg.data else "exact_match"))


COMMANDS = {"train": (BenchTrainConfig, run_train), "generate": (BenchGenerateConfig, run_generate)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        config_type, body = COMMANDS[argv[0]]
        return cli.run(lambda cfg: body(cfg, argv), config_type, argv[1:], config_type.__doc__)

    def no_command() -> None:
        given = f"unknown command {argv[0]!r}" if argv else "no command given"
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1) if argv else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SortedNetError(f"{given}{hint}; use python -m sortednet.bench train|generate [key=value ...]")

    return cli.guarded(no_command, argv, lambda: __doc__.strip())


if __name__ == "__main__":
    sys.exit(main())
