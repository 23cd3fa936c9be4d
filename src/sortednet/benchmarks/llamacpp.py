"""`bench generate llamacpp=[DTYPE,...]`: every exit of a checkpoint where CPU users run models — llama.cpp.

Each exit is written as a GGUF file (:mod:`sortednet.inference.gguf_export`) in each dtype, and llama.cpp decodes
the bench's prompts greedily at batch 1 with it: the table a user reads to pick an exit for a device. Per exit and
dtype: the file size, llama.cpp's tokens/s, the speed-up over the full model in the same dtype, the FLOP-ideal
speed-up (a decoding step's multiply-adds: the exit's layers and the head, against the full model's) and how much
of it is reached, and, from an evaluation directory (``quality=DIR``, written by ``sortednet.evaluate``), the
exit's held-out loss and ROUGE-L.

Then llama.cpp's own speculative decoding (``Llama(draft_model=...)``) with a SoFT exit of the same checkpoint as
the draft, against plain decoding and llama-cpp-python's prompt-lookup draft: tokens/s and whether the greedy
output equals the full model's (it must: the draft only proposes, the full model decides).
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from sortednet.errors import SortedNetError
from sortednet.flops import layer_matmul_params
from sortednet.inference.gguf_export import GGUF_DTYPES, check_exportable, write_gguf
from sortednet.inference.llamacpp import decode_speed, exit_draft, generate_greedy, open_gguf, require_llama_cpp
from sortednet.tables import markdown_table


def check_dtypes(dtypes: list[str]) -> None:
    unknown = [d for d in dtypes if d not in GGUF_DTYPES]
    if unknown or not dtypes:
        raise SortedNetError(f"llamacpp={dtypes}: pick GGUF dtypes from {', '.join(GGUF_DTYPES)}, e.g. llamacpp=[q8_0]")
    require_llama_cpp()  # before any model is loaded


def step_macs(config, exit_: int) -> int:
    """Multiply-adds of one decoding step of sub-model ``exit_``: its layers' matrices and the head (attention over
    the cache left out: small at these lengths)."""
    return exit_ * layer_matmul_params(config) + config.hidden_size * config.vocab_size


def read_quality(directory: str | None, name: str) -> dict[int, dict]:
    """Per exit, the held-out loss and ROUGE-L that ``sortednet.evaluate`` wrote for checkpoint ``name``."""
    quality: dict[int, dict] = {}
    for file, column, key in (("loss.csv", "loss", "loss"), ("generate.csv", "rouge_l", "rouge_l")):
        path = Path(directory or "") / file
        if directory is None or not path.is_file():
            continue
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if row.get("name") == name and row.get(column) not in (None, ""):
                    quality.setdefault(int(row["exit"]), {})[key] = float(row[column])
    return quality


def _write(net, tokenizer, exit_: int, path: Path, dtype: str) -> Path:
    write_gguf(net.submodel(exit_), tokenizer, path, dtype, name=f"exit{exit_}", sortednet={"exit": exit_})
    return path


def deployment_rows(net, tokenizer, exits, prompts, new_tokens: int, dtypes, threads, quality) -> list[dict]:
    """One row per dtype and exit: file size, llama.cpp's batch-1 greedy tokens/s over ``prompts`` (``new_tokens``
    each, end of sequence ignored: steady-state decoding), speed-ups and quality."""
    config, last = net.lm.config, exits[-1]
    rows = []
    with tempfile.TemporaryDirectory(prefix="sortednet-gguf-") as tmp:
        for dtype in dtypes:
            check_exportable(config, dtype)
            for exit_ in exits:
                path = _write(net, tokenizer, exit_, Path(tmp) / f"exit_{exit_}.{dtype}.gguf", dtype)
                llm = open_gguf(path, n_ctx=max(map(len, prompts)) + new_tokens + 8, threads=threads)
                decode_speed(llm, prompts[0], 4)  # warm-up
                seconds = sum(new_tokens / decode_speed(llm, p, new_tokens) for p in prompts)
                row = {"dtype": dtype, "exit": exit_, "mib": path.stat().st_size / 2**20, **quality.get(exit_, {})}
                row["ideal"] = step_macs(config, last) / step_macs(config, exit_)
                rows.append({**row, "tokens_per_s": new_tokens * len(prompts) / seconds})
                path.unlink()  # one file at a time on disk
        for row in rows:
            full = next(r for r in rows if r["dtype"] == row["dtype"] and r["exit"] == last)
            row["speedup"] = row["tokens_per_s"] / full["tokens_per_s"]
    return rows


def speculative_rows(net, tokenizer, exits, draft_exits, prompts, new_tokens, dtype, threads) -> list[dict]:
    """llama-cpp-python's generation loop with the full model: plain, with its prompt-lookup draft, and with each
    exit of ``draft_exits`` as the draft; tokens/s and whether the output equals plain greedy's."""
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding  # the llamacpp extra, checked before

    rows = []
    n_ctx = max(map(len, prompts)) + new_tokens + 16
    with tempfile.TemporaryDirectory(prefix="sortednet-gguf-") as tmp:
        files = {e: _write(net, tokenizer, e, Path(tmp) / f"exit_{e}.gguf", dtype) for e in {exits[-1], *draft_exits}}
        drafts = {"plain": None, "prompt lookup": LlamaPromptLookupDecoding(num_pred_tokens=4)}
        drafts |= {f"draft exit {e}": exit_draft(files[e], 4, n_ctx, threads) for e in draft_exits}
        reference = None
        for name, draft in drafts.items():
            llm = open_gguf(files[exits[-1]], n_ctx=n_ctx, threads=threads, draft_model=draft)
            generate_greedy(llm, prompts[0], 4)  # warm-up
            start = time.perf_counter()
            outputs = [generate_greedy(llm, p, new_tokens) for p in prompts]
            seconds = time.perf_counter() - start
            reference = reference or outputs
            rows.append({"mode": name, "tokens_per_s": sum(map(len, outputs)) / seconds,
                         "lossless": outputs == reference})  # fmt: skip
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    return rows


def format_deployment(rows: list[dict]) -> str:
    fmt = lambda r, key, spec: format(r[key], spec) if key in r else "–"  # noqa: E731
    return markdown_table(
        ["dtype", "exit", "file MiB", "llama.cpp tok/s", "× full", "FLOP-ideal ×", "÷ ideal", "held-out loss",
         "ROUGE-L"],
        [[r["dtype"], r["exit"], f"{r['mib']:.1f}", f"{r['tokens_per_s']:.1f}", f"{r['speedup']:.2f}",
          f"{r['ideal']:.2f}", f"{r['speedup'] / r['ideal']:.2f}", fmt(r, "loss", ".2f"), fmt(r, "rouge_l", ".3f")]
         for r in rows],
    )  # fmt: skip


def format_speculative(rows: list[dict], dtype: str) -> str:
    return markdown_table(
        [f"llama.cpp, full model ({dtype})", "tok/s", "× plain", "output = plain greedy"],
        [
            [r["mode"], f"{r['tokens_per_s']:.1f}", f"{r['speedup']:.2f}", "yes" if r["lossless"] else "NO"]
            for r in rows
        ],
    )
