"""`python -m sortednet.bench train`: the cost of SoFT against SFT and against the full-logits recipe.

Every row runs in a fresh subprocess (so its peak memory is its own), builds a randomly initialised
LLaMA of the given shape, and times forward + backward of one step (no optimizer) over a fixed batch
whose first half of every row is prompt (masked) and second half response.

Implementations:
- ``sft``: the last exit only, head at label positions (``sortednet.loss``);
- ``soft``: ``sortednet.loss`` over k exits;
- ``soft-naive``: full ``[batch, seq, vocab]`` logits per exit, then cross-entropy, averaged — the way
  most early-exit recipes do it, kept here as the reference.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from datetime import date

import torch
import torch.nn.functional as F

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
    # For tests: seconds, not minutes.
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=8, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=1000),
}  # fmt: skip
IMPLS = ("sft", "soft", "soft-naive")


def spread_exits(num_layers: int, k: int) -> list[int]:
    """``k`` exits spread evenly over the depth, the last always included: 8 layers, k=2 -> [4, 8]."""
    return sorted({round(num_layers * (i + 1) / k) for i in range(k)})


def _step_fn(impl: str, lm, exits: list[int], ids, labels):
    from sortednet.loss import label_positions, multi_exit_loss
    from sortednet.model import SortedLM

    net = SortedLM(lm)
    positions, targets = label_positions(labels)

    def ours():
        rows = net.exit_hidden_states(ids, None, exits, positions)
        return multi_exit_loss(rows, {e: net.lm_head for e in exits}, targets)[0]

    def naive():
        out = lm.model(input_ids=ids, output_hidden_states=True)
        losses = []
        for e in exits:
            hidden = out.hidden_states[e] if e == net.num_layers else net.norm(out.hidden_states[e])
            logits = lm.lm_head(hidden).float()
            losses.append(F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()))
        return torch.stack(losses).mean()

    return naive if impl == "soft-naive" else ours


def run_row(shape: str, impl: str, k: int, batch: int, seq: int, steps: int, warmup: int, device: str, dtype: str):
    """Time one configuration in this process; returns its measurements."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=seq)
    lm = LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, dtype))
    exits = [config.num_hidden_layers] if impl == "sft" else spread_exits(config.num_hidden_layers, k)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    step = _step_fn(impl, lm, exits, ids, labels)
    cuda = device.startswith("cuda")
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step().backward()
        if cuda:
            torch.cuda.synchronize()
        lm.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_labels = count_labels(labels)
    flops = train_step_flops(config, len(exits), batch * seq, n_labels, seq)
    return {"median_s": statistics.median(times), "peak_bytes": peak, "flops": flops, "exits": exits}


def _row_in_subprocess(**settings) -> dict:
    cmd = [sys.executable, "-m", "sortednet.bench", "_row", json.dumps(settings)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"sortednet.bench: row {settings} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_train(args) -> list[dict]:
    rows = []
    for shape in args.shapes:
        settings = dict(
            shape=shape, batch=args.batch, seq=args.seq, steps=args.steps, warmup=args.warmup,
            device=args.device, dtype=args.dtype,
        )  # fmt: skip
        sft = _row_in_subprocess(impl="sft", k=1, **settings)
        rows.append({"shape": shape, "impl": "sft", "k": 1, **sft})
        for k in args.exits:
            for impl in ("soft", "soft-naive"):
                result = _row_in_subprocess(impl=impl, k=k, **settings)
                rows.append({"shape": shape, "impl": impl, "k": k, **result})
        for row in rows:
            if row["shape"] == shape:
                row["time_ratio"] = row["median_s"] / sft["median_s"]
                row["ideal_ratio"] = row["flops"] / sft["flops"]
                row["mem_above_sft_mb"] = (row["peak_bytes"] - sft["peak_bytes"]) / 2**20
                row["tflops_per_s"] = row["flops"] / row["median_s"] / 1e12
                tokens = args.batch * args.seq
                row["tokens_per_s"] = tokens / row["median_s"]
                if args.peak_tflops:
                    row["mfu"] = row["tflops_per_s"] / args.peak_tflops
    return rows


def format_table(rows: list[dict], with_mfu: bool) -> str:
    header = "| shape | impl | exits | step ms | peak MB | above sft MB | time / sft | FLOP-ideal | ÷ ideal | tok/s |"
    if with_mfu:
        header += " MFU |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        cells = [
            r["shape"], r["impl"], str(len(r["exits"])), f"{r['median_s'] * 1e3:.0f}", f"{r['peak_bytes'] / 2**20:.0f}",
            f"{r['mem_above_sft_mb']:+.0f}", f"{r['time_ratio']:.2f}", f"{r['ideal_ratio']:.2f}",
            f"{r['time_ratio'] / r['ideal_ratio']:.2f}", f"{r['tokens_per_s']:.0f}",
        ]  # fmt: skip
        if with_mfu:
            cells.append(f"{r['mfu']:.1%}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bench_rows(data: str | None, n: int) -> tuple[list[dict], list[dict]]:
    """Rows to measure and rows to calibrate on, ``n`` each and disjoint: fresh rows of the embedded task
    families (seeds the training data did not use), or rows ``[0, n)`` and ``[n, 2n)`` of an Alpaca file."""
    from sortednet.data.embedded import make_rows

    if data is None:
        return make_rows(n, seed=1), make_rows(n, seed=2)
    from sortednet.data.alpaca import check_rows, read_rows
    from sortednet.errors import SortedNetError

    rows = check_rows(read_rows(data), data)
    if len(rows) < 2 * n:
        raise SortedNetError(f"--data {data} has {len(rows)} rows; --prompts {n} needs {2 * n} (measure + calibrate)")
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
        from sortednet.inference.calibrate import decode_all

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
                row["detail"] = f"acceptance {sum(s['accepted'] for s in stats) / drafted:.2f}"
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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_row"]:
        print(json.dumps(run_row(**json.loads(argv[1]))))
        return
    parser = argparse.ArgumentParser(prog="python -m sortednet.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="SoFT vs SFT vs full-logits SoFT: step time and peak memory")
    train.add_argument("--shapes", nargs="+", default=["llama-32k", "body-heavy"], choices=sorted(SHAPES))
    train.add_argument("--exits", nargs="+", type=int, default=[1, 2, 4, 8], help="exit-set sizes")
    train.add_argument("--batch", type=int, default=4)
    train.add_argument("--seq", type=int, default=256)
    train.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    train.add_argument("--warmup", type=int, default=2)
    train.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    train.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    train.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    gen = sub.add_parser("generate", help="every decoding mode against full-model greedy: speed and quality")
    gen.add_argument("--ckpt", required=True, help="a sortednet checkpoint")
    gen.add_argument("--prompts", type=int, default=60, help="prompts measured (and as many calibrated on)")
    gen.add_argument(
        "--data", default=None,
        help="an Alpaca .json/.jsonl of held-out rows: measure rows [0, prompts), calibrate on the next ones, "
        "score ROUGE-L against their outputs (default: fresh embedded-task rows, exact match)",
    )  # fmt: skip
    gen.add_argument("--max-new-tokens", type=int, default=24)
    gen.add_argument("--draft-exits", nargs="+", type=int, default=None, help="default: every exit below L")
    gen.add_argument("--thresholds", nargs="+", type=float, default=None, help="default: calibrated")
    gen.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        help="calibration's quality budget (exact match, or ROUGE-L with --data)",
    )
    gen.add_argument("--threads", type=int, default=None)
    gen.add_argument(
        "--ignore-eos", action="store_true", help="always generate --max-new-tokens (steady-state decoding)"
    )
    gen.add_argument(
        "--batch-size", nargs="+", type=int, default=None,
        help="a sweep of batch sizes (e.g. 1 4 16): HF generate, plain batched greedy, speculative, dynamic",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "generate" and args.batch_size:
        if any(b < 1 for b in args.batch_size):
            parser.error("--batch-size takes batch sizes >= 1")
        rows = bench_generate_batches(args)
        print(_generate_header(args, argv))
        print(format_batch_table(rows))
        return
    if args.command == "generate":
        rows, thresholds = bench_generate(args)
        print(_generate_header(args, argv))
        print(format_generate_table(rows, "rouge_l" if args.data else "exact_match"))
        return
    if any(k < 1 for k in args.exits):
        parser.error("--exits takes exit-set sizes >= 1")
    rows = bench_train(args)
    print(f"# python -m sortednet.bench {' '.join(argv)}  ({date.today()}, {args.device}, {args.dtype}, "
          f"batch {args.batch} x {args.seq} tokens, half of them labels, forward + backward)")  # fmt: skip
    print(format_table(rows, with_mfu=args.peak_tflops is not None))


if __name__ == "__main__":
    main()
