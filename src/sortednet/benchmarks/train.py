"""`bench train`'s measurements: the cost per training step of SoFT against SFT and against the full-logits
recipe, on randomly initialised LLaMA shapes.

Each row runs in a fresh process (``python -m sortednet.benchmarks.train SETTINGS_JSON``), so its peak memory
is its own.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from sortednet.config import LossConfig
from sortednet.flops import train_step_flops
from sortednet.inference.load import resolve_device
from sortednet.loss import count_labels, label_positions, multi_exit_loss
from sortednet.model import SortedLM
from sortednet.schedule import ExitSchedule, spread_exits
from sortednet.tables import markdown_table

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


def _loss_fn(impl: str, lm, exits: list[int], ids, labels):
    """The loss of step ``step`` for ``impl`` over the exit set ``exits``."""
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


def row_in_subprocess(**settings) -> dict:
    """:func:`run_row` in a fresh Python process (this module run as a script), so its peak memory is its own."""
    cmd = [sys.executable, "-m", "sortednet.benchmarks.train", json.dumps(settings)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"sortednet.bench: row {settings} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _train_rows(args) -> list[dict]:
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


def bench_train(args) -> list[dict]:
    """Measure every row ``repeats`` times, interleaved (odd repeats in reverse order); each column is the median
    over repeats, and ratios are taken within a repeat first."""
    rows = _train_rows(args)
    settings = dict(batch=args.batch, seq=args.seq, steps=args.steps, warmup=args.warmup,
                    device=str(resolve_device(args.device)), optimizer=args.optimizer)  # fmt: skip
    runs: list[list[dict]] = [[] for _ in rows]
    for repeat in range(args.repeats):
        for i in range(len(rows)) if repeat % 2 == 0 else reversed(range(len(rows))):
            r = rows[i]
            runs[i].append(
                row_in_subprocess(shape=r["shape"], impl=r["impl"], k=r["k"], precision=r["precision"], **settings)
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


COLUMNS = ["shape", "precision", "impl", "exits", "exits/step", "step ms", "steps/h", "peak MB", "above sft MB",
           "time / sft", "FLOP-ideal", "÷ ideal", "× fp32 SoFT", "tok/s"]  # fmt: skip


def format_table(rows: list[dict], with_mfu: bool) -> str:
    """`bench train`'s table; ``with_mfu`` adds the MFU column (rows measured with a ``peak_tflops``)."""
    lines = []
    for r in rows:
        known = lambda key, spec, r=r: format(r[key], spec) if key in r else "–"  # noqa: E731
        ideal = format(r["time_ratio"] / r["ideal_ratio"], ".2f") if "time_ratio" in r else "–"
        cells = [
            r["shape"], r["precision"], r["impl"], str(len(r["exits"])), str(exits_per_step(r["impl"], r["k"])),
            f"{r['median_s'] * 1e3:.0f}", f"{3600 / r['median_s']:.0f}", f"{r['peak_bytes'] / 2**20:.0f}",
            known("mem_above_sft_mb", "+.0f"), known("time_ratio", ".2f"), known("ideal_ratio", ".2f"), ideal,
            known("speedup", ".2f"), f"{r['tokens_per_s']:.0f}",
        ]  # fmt: skip
        lines.append([*cells, f"{r['mfu']:.1%}"] if with_mfu else cells)
    return markdown_table([*COLUMNS, "MFU"] if with_mfu else COLUMNS, lines)


if __name__ == "__main__":  # one row, in the fresh process row_in_subprocess starts
    print(json.dumps(run_row(**json.loads(sys.argv[1]))))
