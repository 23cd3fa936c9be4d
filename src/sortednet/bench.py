"""`python -m sortednet.bench train|generate [key=value ...]`: what SoFT costs to train, and what its exits buy
at decoding time.

- ``bench train``: the cost of SoFT against SFT and against the full-logits recipe, per step;
- ``bench generate``: every decoding mode of a checkpoint against full-model greedy: speed and quality.

``python -m sortednet.bench train --help`` (or ``generate --help``) lists the keys of each.
"""

from __future__ import annotations

import difflib
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date

import torch
import torch.nn.functional as F

from sortednet import cli
from sortednet.errors import SortedNetError
from sortednet.flops import train_step_flops
from sortednet.loss import count_labels
from sortednet.metrics import mean_score

SHAPES = {
    # LLaMA proportions (intermediate ~ 2.7 x width, 32000-token vocabulary), sized for a CPU.
    "llama-32k": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=8, vocab_size=32000),
    # The same body with a small vocabulary: body-to-head FLOPs ~ 50, as in Llama-2-7B.
    "body-heavy": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=8, vocab_size=2048),
    # SmolLM2-135M's shape (random weights): the real model of the SmolLM2 recipe, head 28M vs body 106M MACs/token.
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    # For tests: seconds, not minutes.
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=1000),
}  # fmt: skip
# The step's loss: the last exit; all k exits (the paper); 2 of the k a step, drawn or rotating (loss=sampled,
# loss=rotational); all k through full logits (the usual early-exit recipe, the reference).
IMPLS = ("sft", "soft", "sampled", "rotational", "soft-naive")
# Lightning's names: fp32; bf16 autocast over fp32 weights; bf16 weights.
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
OPTIMIZERS = ("adamw", "none")


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


def spread_exits(num_layers: int, k: int) -> list[int]:
    """``k`` exits spread evenly over the depth, the last always included: 8 layers, k=2 -> [4, 8]."""
    return sorted({round(num_layers * (i + 1) / k) for i in range(k)})


def _loss_fn(impl: str, lm, exits: list[int], ids, labels):
    """The loss of step ``step`` for ``impl`` over the exit set ``exits``."""
    from sortednet.config import LossConfig
    from sortednet.loss import label_positions, multi_exit_loss
    from sortednet.model import SortedLM
    from sortednet.schedule import ExitSchedule

    net = SortedLM(lm)
    positions, targets = label_positions(labels)
    sample = 2 if impl in ("sampled", "rotational") else None
    schedule = ExitSchedule(
        exits, LossConfig(sample=sample, curriculum="rotational" if impl == "rotational" else "none")
    )

    def ours(step: int):
        active = schedule.active(step)
        rows = net.exit_hidden_states(ids, None, active, positions)
        return multi_exit_loss(rows, {e: net.lm_head for e in active}, targets)[0]

    def naive(step: int):
        out = lm.model(input_ids=ids, output_hidden_states=True)
        losses = []
        for e in exits:
            hidden = out.hidden_states[e] if e == net.num_layers else net.norm(out.hidden_states[e])
            logits = lm.lm_head(hidden).float()
            losses.append(F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()))
        return torch.stack(losses).mean()

    return naive if impl == "soft-naive" else ours


def exits_per_step(impl: str, k: int) -> int:
    return 1 if impl == "sft" else 2 if impl in ("sampled", "rotational") else k


def run_row(shape: str, impl: str, k: int, batch: int, seq: int, steps: int, warmup: int, device: str,
            precision: str, optimizer: str) -> dict:  # fmt: skip
    """Time one configuration in this process; returns its measurements."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=seq)
    weights = torch.bfloat16 if precision == "bf16-true" else torch.float32
    lm = LlamaForCausalLM(config).to(device=device, dtype=weights)
    exits = [config.num_hidden_layers] if impl == "sft" else spread_exits(config.num_hidden_layers, k)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    loss_of = _loss_fn(impl, lm, exits, ids, labels)
    adamw = torch.optim.AdamW(lm.parameters(), lr=1e-5) if optimizer == "adamw" else None
    cuda = device.startswith("cuda")
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = loss_of(i)
        loss.backward()
        if adamw is not None:
            adamw.step()
        lm.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_labels = count_labels(labels)
    flops = train_step_flops(config, exits_per_step(impl, k), batch * seq, n_labels, seq)
    return {"median_s": statistics.median(times), "peak_bytes": peak, "flops": flops, "exits": exits}


def _row_in_subprocess(**settings) -> dict:
    cmd = [sys.executable, "-m", "sortednet.bench", "_row", json.dumps(settings)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"sortednet.bench: row {settings} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def resolve_device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


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


def _train_rows(args: BenchTrainConfig) -> list[dict]:
    """The table's rows, before measuring: SFT once per shape and precision, then each loss at each k."""
    rows = []
    for shape in args.shapes:
        for precision in args.precision:
            if "sft" in args.impls:
                rows.append({"shape": shape, "precision": precision, "impl": "sft", "k": 1})
            for k in args.exits:
                for impl in args.impls:
                    if impl == "sft" or (impl in ("sampled", "rotational") and k < 3):
                        continue  # 2 exits of 1 or 2 is soft itself
                    rows.append({"shape": shape, "precision": precision, "impl": impl, "k": k})
    return rows


def _index(rows: list[dict], shape: str, impl: str, precision: str, k: int | None = None) -> int | None:
    for i, r in enumerate(rows):
        if (r["shape"], r["impl"], r["precision"]) == (shape, impl, precision) and k in (None, r["k"]):
            return i
    return None


def bench_train(args: BenchTrainConfig) -> list[dict]:
    """Measure every row ``repeats`` times, interleaved (odd repeats in reverse order); each column is the median
    over repeats, and ratios are taken within a repeat first."""
    rows = _train_rows(args)
    settings = dict(batch=args.batch, seq=args.seq, steps=args.steps, warmup=args.warmup,
                    device=resolve_device(args.device), optimizer=args.optimizer)  # fmt: skip
    runs: list[list[dict]] = [[] for _ in rows]
    for repeat in range(args.repeats):
        for i in range(len(rows)) if repeat % 2 == 0 else reversed(range(len(rows))):
            r = rows[i]
            runs[i].append(
                _row_in_subprocess(shape=r["shape"], impl=r["impl"], k=r["k"], precision=r["precision"], **settings)
            )
    reference_k = max(args.exits)
    for i, r in enumerate(rows):
        times = [run["median_s"] for run in runs[i]]
        r.update(runs[i][0], median_s=statistics.median(times))
        r["peak_bytes"] = statistics.median(run["peak_bytes"] for run in runs[i])
        sft = _index(rows, r["shape"], "sft", r["precision"])
        if sft is not None:
            r["time_ratio"] = statistics.median(t / run["median_s"] for t, run in zip(times, runs[sft], strict=True))
            r["ideal_ratio"] = r["flops"] / runs[sft][0]["flops"]
            r["mem_above_sft_mb"] = (r["peak_bytes"] - statistics.median(x["peak_bytes"] for x in runs[sft])) / 2**20
        recipe = _index(rows, r["shape"], "soft", "32-true", reference_k)  # today's recipe step: fp32, every exit
        if recipe is not None:
            r["speedup"] = statistics.median(run["median_s"] / t for t, run in zip(times, runs[recipe], strict=True))
        r["tflops_per_s"] = r["flops"] / r["median_s"] / 1e12
        r["tokens_per_s"] = args.batch * args.seq / r["median_s"]
        if args.peak_tflops:
            r["mfu"] = r["tflops_per_s"] / args.peak_tflops
    return rows


def format_table(rows: list[dict], with_mfu: bool) -> str:
    header = (
        "| shape | precision | impl | exits | exits/step | step ms | steps/h | peak MB | above sft MB | time / sft "
        "| FLOP-ideal | ÷ ideal | × fp32 SoFT | tok/s |"
    )
    if with_mfu:
        header += " MFU |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        known = lambda key, spec, r=r: format(r[key], spec) if key in r else "–"  # noqa: E731
        ideal = format(r["time_ratio"] / r["ideal_ratio"], ".2f") if "time_ratio" in r else "–"
        cells = [
            r["shape"], r["precision"], r["impl"], str(len(r["exits"])), str(exits_per_step(r["impl"], r["k"])),
            f"{r['median_s'] * 1e3:.0f}", f"{3600 / r['median_s']:.0f}", f"{r['peak_bytes'] / 2**20:.0f}",
            known("mem_above_sft_mb", "+.0f"), known("time_ratio", ".2f"), known("ideal_ratio", ".2f"), ideal,
            known("speedup", ".2f"), f"{r['tokens_per_s']:.0f}",
        ]  # fmt: skip
        if with_mfu:
            cells.append(f"{r['mfu']:.1%}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bench_rows(data: str | None, n: int) -> tuple[list[dict], list[dict]]:
    """Rows to measure and rows to calibrate on, ``n`` each and disjoint: fresh rows of the embedded task
    families (seeds the training data did not use), or rows ``[0, n)`` and ``[n, 2n)`` of an Alpaca file."""
    from sortednet.embedded import make_rows

    if data is None:
        return make_rows(n, seed=1), make_rows(n, seed=2)
    from sortednet.data.rows import check_rows, read_rows

    rows = check_rows(read_rows(data), data)
    if len(rows) < 2 * n:
        raise SortedNetError(f"data={data} has {len(rows)} rows; prompts={n} needs {2 * n} (measure + calibrate)")
    return rows[:n], rows[n : 2 * n]


class _GenerateBench:
    """What every `bench generate` row shares: the model, the prompts and their references, the thresholds."""

    def __init__(self, args):
        from sortednet.inference.calibrate import calibrate
        from sortednet.inference.load import load_sorted, prompt_style_of

        if args.threads:
            torch.set_num_threads(args.threads)
        self.args = args
        self.net, self.tokenizer, meta = load_sorted(args.ckpt)
        style = prompt_style_of(meta, self.tokenizer)
        self.eos = None if args.ignore_eos else self.tokenizer.eos_token_id
        self.exits = meta["exits"]
        self.metric = "rouge_l" if args.data else "exact_match"
        rows, cal_rows = _bench_rows(args.data, args.prompts)

        def encode(rs):
            return [self.tokenizer(style.format(r["instruction"], r["input"]))["input_ids"] for r in rs]

        self.prompts, self.refs = encode(rows), [r["output"] for r in rows]
        self.thresholds = args.thresholds
        if not self.thresholds:
            self.thresholds = calibrate(
                self.net, self.tokenizer, encode(cal_rows), [r["output"] for r in cal_rows], self.exits,
                args.max_drop, args.max_new_tokens, metric=self.metric,
            )[0]  # fmt: skip

    def measure(self, name: str, run) -> dict:
        run(self.prompts[:2])  # warm-up
        start = time.perf_counter()
        outputs, stats = run(self.prompts)
        seconds = time.perf_counter() - start
        texts = self.tokenizer.batch_decode(outputs, skip_special_tokens=True)
        return {"mode": name, "outputs": outputs, "seconds": seconds, "tokens": sum(map(len, outputs)),
                "quality": mean_score(texts, self.refs, self.metric), "stats": stats}  # fmt: skip

    def ours(self, batch_size: int = 1, **mode):
        from sortednet.inference.decode import decode_all

        return lambda ps: decode_all(self.net, ps, self.args.max_new_tokens, self.eos, batch_size=batch_size, **mode)

    def hf_generate(self, batch_size: int, **extra):
        """Hugging Face ``generate`` of the full model, greedy, ``batch_size`` left-padded prompts at a time."""
        from sortednet.data.alpaca import pad_id

        pad = pad_id(self.tokenizer)

        def run(ps):
            outs = []
            for start in range(0, len(ps), batch_size):
                chunk = ps[start : start + batch_size]
                width = max(map(len, chunk))
                ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
                out = self.net.lm.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                           max_new_tokens=self.args.max_new_tokens, eos_token_id=self.eos,
                                           pad_token_id=pad, **extra)  # fmt: skip
                for row in out[:, width:].tolist():  # up to and including the first EOS; the rest is padding
                    outs.append(row[: row.index(self.eos) + 1] if self.eos in row else row)
            return outs, []

        return run

    def summarise(self, rows: list[dict], reference: dict) -> None:
        """Speed against ``reference`` and each row's agreement with the full model's outputs."""
        full = self.full_outputs
        for row in rows:
            row["tokens_per_s"] = row["tokens"] / row["seconds"]
        for row in rows:
            row["speedup"] = row["tokens_per_s"] / reference["tokens_per_s"]
            row["agreement"] = sum(o == f for o, f in zip(row["outputs"], full, strict=True)) / len(full)
            stats = row["stats"]
            if stats and "acceptance" in stats[0]:
                drafted = max(sum(s["drafted"] for s in stats), 1)
                plain = sum(s["plain_tokens"] for s in stats) / max(sum(s["tokens"] for s in stats), 1)
                # plain: the share of tokens decoded while the timed switch had drafting off
                row["detail"] = f"acceptance {sum(s['accepted'] for s in stats) / drafted:.2f}, {plain:.0%} plain"
            elif stats and "mean_exit" in stats[0]:
                tokens = sum(s["tokens"] for s in stats)
                row["detail"] = f"mean exit {sum(s['mean_exit'] * s['tokens'] for s in stats) / max(tokens, 1):.2f}"


def bench_generate(args) -> tuple[list[dict], list[float]]:
    """Every decoding mode on the same prompts, one at a time: speed against full-model greedy, and quality."""
    from sortednet.flops import layer_matmul_params

    bench = _GenerateBench(args)
    net, exits, L = bench.net, bench.exits, bench.net.num_layers
    cfg = net.lm.config
    per_layer, head = 2 * layer_matmul_params(cfg), 2 * cfg.hidden_size * cfg.vocab_size
    rows = [bench.measure(f"full (exit {L})", bench.ours(mode="exit", exit=L))]
    bench.full_outputs = rows[0]["outputs"]
    for k in exits[:-1]:
        row = bench.measure(f"exit {k}", bench.ours(mode="exit", exit=k))
        row["ideal"] = (L * per_layer + head) / (k * per_layer + head)
        rows.append(row)
    for e in args.draft_exits or exits[:-1]:
        rows.append(bench.measure(f"speculative draft {e}", bench.ours(mode="speculative", draft_exit=e)))
        rows.append(bench.measure(f"HF assistant_early_exit={e}", bench.hf_generate(1, assistant_early_exit=e)))
    dynamic = bench.ours(mode="dynamic", exits=exits, thresholds=bench.thresholds)
    rows.append(bench.measure(f"dynamic {bench.thresholds}", dynamic))
    bench.summarise(rows, rows[0])
    return rows, bench.thresholds


def bench_generate_batches(args) -> list[dict]:
    """Per batch size: HF ``generate``, plain batched greedy, speculative and dynamic, on the same prompts."""
    bench = _GenerateBench(args)
    L, exits = bench.net.num_layers, bench.exits
    bench.full_outputs = bench.ours(mode="exit", exit=L)(bench.prompts)[0]  # full-model greedy, one at a time
    rows = []
    for batch in args.batch_size:
        plain = bench.measure(f"plain (exit {L})", bench.ours(batch, mode="exit", exit=L))
        group = [bench.measure("HF generate", bench.hf_generate(batch)), plain]
        for e in args.draft_exits or exits[:-1]:
            group.append(bench.measure(f"speculative draft {e}", bench.ours(batch, mode="speculative", draft_exit=e)))
        dynamic = bench.ours(batch, mode="dynamic", exits=exits, thresholds=bench.thresholds)
        group.append(bench.measure(f"dynamic {bench.thresholds}", dynamic))
        bench.summarise(group, plain)
        rows += [{"batch": batch, **row} for row in group]
    return rows


def _generate_header(args, argv: list[str]) -> str:
    source = args.data or "the embedded tasks"
    return (f"# python -m sortednet.bench {' '.join(argv)}  ({date.today()}, cpu, {torch.get_num_threads()} threads, "
            f"{args.prompts} prompts of {source}, greedy, <= {args.max_new_tokens} new tokens)")  # fmt: skip


def format_batch_table(rows: list[dict]) -> str:
    lines = ["| batch | mode | tokens/s | × plain batched | acceptance / depth | = full output |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['batch']} | {r['mode']} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}x | "
                     f"{r.get('detail', '')} | {r['agreement']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def format_generate_table(rows: list[dict], metric: str = "exact_match") -> str:
    lines = [
        f"| mode | tokens/s | speedup | ideal | ÷ ideal | acceptance / depth | {metric.replace('_', ' ')} "
        "| = full output |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ideal = f"{r['ideal']:.2f}x | {r['speedup'] / r['ideal']:.2f}" if "ideal" in r else " | "
        lines.append(
            f"| {r['mode']} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}x | {ideal} | {r.get('detail', '')} | "
            f"{r['quality']:.2f} | {r['agreement']:.2f} |"
        )
    return "\n".join(lines)


def run_train(cfg: BenchTrainConfig, argv: list[str]) -> None:
    check_train(cfg)
    rows = bench_train(cfg)
    step = "forward + backward + AdamW" if cfg.optimizer == "adamw" else "forward + backward"
    print(f"# python -m sortednet.bench {' '.join(argv)}  ({date.today()}, {resolve_device(cfg.device)}, "
          f"batch {cfg.batch} x {cfg.seq} tokens, half of them labels, {step}; medians of {cfg.repeats} "
          f"interleaved repeat(s) of {cfg.steps} timed steps; × fp32 SoFT: speed over 32-true soft at "
          f"{max(cfg.exits)} exits)")  # fmt: skip
    print(format_table(rows, with_mfu=cfg.peak_tflops is not None))


def run_generate(cfg: BenchGenerateConfig, argv: list[str]) -> None:
    check_generate(cfg)
    cli.quiet_transformers()
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
    if argv[:1] == ["_row"]:  # one row of bench train, in the fresh process _row_in_subprocess starts
        print(json.dumps(run_row(**json.loads(argv[1]))))
        return 0
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
