"""`bench generate`'s measurements: every decoding mode of a checkpoint against full-model greedy on the same
prompts: speed and quality."""

from __future__ import annotations

import time

import torch

from sortednet.data.alpaca import pad_id
from sortednet.data.rows import held_out_rows
from sortednet.errors import SortedNetError
from sortednet.flops import layer_matmul_params
from sortednet.inference.calibrate import calibrate
from sortednet.inference.decode import decode_all
from sortednet.inference.load import load_sorted, prompt_style_of
from sortednet.metrics import mean_score
from sortednet.prompts import encode_prompts
from sortednet.tables import markdown_table


def measured_and_calibration_rows(data: str | None, n: int) -> tuple[list[dict], list[dict]]:
    """Rows to measure and rows to calibrate on, ``n`` each and disjoint: fresh rows of the embedded task
    families (two seeds the training data did not use), or rows ``[0, n)`` and ``[n, 2n)`` of an Alpaca file."""
    measured, calibration = held_out_rows(data, n, seed=1), held_out_rows(data, n, seed=2, skip=n)
    if len(calibration) < n:
        have = len(measured) + len(calibration)
        raise SortedNetError(f"data={data} has {have} rows; prompts={n} needs {2 * n} (measure + calibrate)")
    return measured, calibration


class _GenerateBench:
    """What every `bench generate` row shares: the model, the prompts and their references, the thresholds."""

    def __init__(self, args):
        if args.threads:
            torch.set_num_threads(args.threads)
        self.args = args
        self.net, self.tokenizer, meta = load_sorted(args.ckpt)
        style = prompt_style_of(meta, self.tokenizer)
        self.eos = None if args.ignore_eos else self.tokenizer.eos_token_id
        self.exits = meta.exits
        self.metric = "rouge_l" if args.data else "exact_match"
        rows, cal_rows = measured_and_calibration_rows(args.data, args.prompts)
        self.prompts, self.refs = encode_prompts(self.tokenizer, style, rows), [r["output"] for r in rows]
        self.thresholds = args.thresholds
        if not self.thresholds:
            cal_prompts = encode_prompts(self.tokenizer, style, cal_rows)
            self.thresholds = calibrate(
                self.net, self.tokenizer, cal_prompts, [r["output"] for r in cal_rows], self.exits,
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
        return lambda ps: decode_all(self.net, ps, self.args.max_new_tokens, self.eos, batch_size=batch_size, **mode)

    def hf_generate(self, batch_size: int, **extra):
        """Hugging Face ``generate`` of the full model, greedy, ``batch_size`` left-padded prompts at a time."""
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


def format_batch_table(rows: list[dict]) -> str:
    header = ["batch", "mode", "tokens/s", "× plain batched", "acceptance / depth", "= full output"]
    cells = [
        [r["batch"], r["mode"], f"{r['tokens_per_s']:.0f}", f"{r['speedup']:.2f}x", r.get("detail", ""),
         f"{r['agreement']:.2f}"]
        for r in rows
    ]  # fmt: skip
    return markdown_table(header, cells)


def format_generate_table(rows: list[dict], metric: str = "exact_match") -> str:
    header = ["mode", "tokens/s", "speedup", "ideal", "÷ ideal", "acceptance / depth", metric.replace("_", " ")]
    cells = []
    for r in rows:
        ideal = [f"{r['ideal']:.2f}x", f"{r['speedup'] / r['ideal']:.2f}"] if "ideal" in r else ["", ""]
        cells.append([r["mode"], f"{r['tokens_per_s']:.0f}", f"{r['speedup']:.2f}x", *ideal, r.get("detail", ""),
                      f"{r['quality']:.2f}", f"{r['agreement']:.2f}"])  # fmt: skip
    return markdown_table([*header, "= full output"], cells)
