"""Per-exit greedy answers to an instruction set, saved as answer files that the other suites reuse.

For checkpoint name N and exit K the run directory gets

- ``answers/N_exitK.jsonl``: one JSON object per instruction, in the instruction set's order:
  ``index``, ``instruction``, ``input``, ``output`` (the answer), ``exit``, ``ckpt`` (the name), ``tokens``
  (answer length in tokens, its EOS included), ``eos`` (the answer ended on EOS, not on ``max_new_tokens``),
  and when the instruction set has a reference ``output``: ``reference``, ``exact`` (answer == reference,
  stripped) and ``rouge_l`` (ROUGE-L F-measure of answer vs reference, from ``rouge-score``);
- ``answers/N_exitK.meta.json``: ``settings`` (what the answers depend on: the checkpoint's path and
  size/mtime, the exit, a hash of the instruction set, the prompt template, ``max_new_tokens``) and the
  timing of this exit's decoding: ``seconds`` (wall clock of the whole set), ``answer_tokens`` (the tokens
  generated, each answer's EOS included), ``ms_per_token``, ``batch_size``, ``device``; the answers'
  ``mean_answer_tokens`` and ``eos_share``; and ``exact_match`` / ``rouge_l`` / ``references`` when references
  exist.

An answer file whose recorded settings equal the current ones is reused as is; otherwise it is
regenerated and replaced atomically (the ``.meta.json`` last, so a crash never leaves a file that looks
complete).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from sortednet.config import DataConfig
from sortednet.data.alpaca import split
from sortednet.data.rows import check_rows, json_lines, read_rows
from sortednet.errors import SortedNetError
from sortednet.eval.checkpoints import each_checkpoint
from sortednet.eval.exits import exact_match, greedy_ids
from sortednet.eval.output import plot_per_exit, show_table
from sortednet.hub import EMBEDDED, default_cache_dir, resolve
from sortednet.inference.load import prompt_style_of
from sortednet.io import write_text_atomically
from sortednet.metrics import rouge_l
from sortednet.prompts import encode_prompts

PANDALM_FILE = "testset-inference-v1.json"
PANDALM_URL = "https://raw.githubusercontent.com/WeOpenML/PandaLM/main/data/testset-inference-v1.json"


def default_instructions() -> Path:
    """PandaLM's 170-instruction test set in the sortednet cache."""
    return default_cache_dir() / "pandalm" / PANDALM_FILE


def read_instructions(path: str | None, limit: int | None = None, cache_dir=None) -> list[dict]:
    """Items ``{"instruction", "input"[, "reference"]}`` from an Alpaca-format .json/.jsonl file (``output``, if
    present, is the reference), ``embedded`` (the embedded set's validation split) or, for ``None``, PandaLM's
    test set in the cache."""
    if path == EMBEDDED:
        rows = _embedded_validation_rows(cache_dir)
        source = "the embedded validation split"
    else:
        file = Path(path).expanduser() if path else default_instructions()
        if not file.is_file():
            if path is None:
                raise SortedNetError(
                    f"PandaLM's test set is not at {file}; get it with: mkdir -p {file.parent} && curl -L -o {file} "
                    f"{PANDALM_URL} (or pass instructions=PATH, or instructions=embedded)"
                )
            raise SortedNetError(f"instruction set {path!r} not found; pass instructions=FILE.json|FILE.jsonl|embedded")
        if file.suffix not in (".json", ".jsonl"):
            raise SortedNetError(f"instruction set {path!r} must be Alpaca-format .json or .jsonl")
        rows, source = read_rows(str(file)), str(file)
    items = []
    for index, row in enumerate(rows):
        # PandaLM's own test set has a row with a blank instruction and only an input: kept, as it is asked
        text = row.get("instruction") if isinstance(row, dict) else None
        if not isinstance(text, str) or not (text.strip() or str(row.get("input") or "").strip()):
            raise SortedNetError(f"row {index} of {source} has no 'instruction' text; every row needs one")
        item = {"instruction": row["instruction"], "input": row.get("input") or ""}
        for key, value in (("input", item["input"]), ("output", row.get("output"))):
            if value is not None and not isinstance(value, str):
                raise SortedNetError(f"row {index} of {source}: {key!r} is a {type(value).__name__}, not text")
        if row.get("output") is not None:
            item["reference"] = row["output"]
        items.append(item)
    items = items[:limit] if limit is not None else items
    if not items:
        raise SortedNetError(f"{source} holds no instructions")
    return items


def _embedded_validation_rows(cache_dir) -> list[dict]:
    """The rows of the embedded data set that training holds out (default split settings)."""
    path = resolve(EMBEDDED, "data.json", cache_dir)
    rows = check_rows(read_rows(path), path)
    defaults = DataConfig()
    return [rows[i] for i in split(len(rows), defaults.val_size, defaults.seed)[1]]


def answers_path(root: Path, name: str, exit_: int) -> Path:
    return Path(root) / "answers" / f"{name}_exit{exit_}.jsonl"


def meta_path(answers: Path) -> Path:
    return answers.with_name(answers.name.removesuffix(".jsonl") + ".meta.json")


def checkpoint_stamp(ckpt: str) -> str:
    """Size and modification time of the checkpoint's files: changes when it is rewritten."""
    path = Path(ckpt).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def answer_settings(ckpt: str, exit_: int, items: list[dict], max_new_tokens: int, style) -> dict:
    """What an answer file depends on; equal settings mean the recorded answers are still valid."""
    digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "ckpt": str(Path(ckpt).expanduser().resolve()),
        "ckpt_stamp": checkpoint_stamp(ckpt),
        "exit": exit_,
        "instructions_sha256": digest,
        "instructions": len(items),
        "prompt_template": [style.with_input, style.without_input],
        "max_new_tokens": max_new_tokens,
        "decoding": "greedy",
        # 2: lines carry tokens/eos/rouge_l; answer files written before are regenerated, not half-reported
        "line_format": 2,
    }


def read_answer_file(path: Path) -> list[dict]:
    """The lines of an answer file, or a one-line error."""
    if not path.is_file():
        raise SortedNetError(f"answer file {path} not found; run suite=generate first")
    return json_lines(path.read_text(encoding="utf-8"), path)


def reusable(path: Path, settings: dict) -> tuple[list[dict], dict] | None:
    """``(lines, meta)`` of an existing answer file made with ``settings``, else None."""
    meta_file = meta_path(path)
    if not (path.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text())
        lines = read_answer_file(path)
    except (json.JSONDecodeError, SortedNetError):
        return None
    if meta.get("settings") != settings or len(lines) != settings["instructions"]:
        changed = sorted(k for k in settings if (meta.get("settings") or {}).get(k) != settings[k])
        print(f"sortednet: regenerating {path.name} (changed: {', '.join(changed) or 'line count'})", file=sys.stderr)
        return None
    return lines, meta


def encode(items: list[dict], tokenizer, style, net, max_new_tokens: int) -> list[list[int]]:
    """Prompt ids as training tokenizes them; prompts that do not fit the context window are an error."""
    ids = encode_prompts(tokenizer, style, items)
    window = getattr(net.lm.config, "max_position_embeddings", None)
    if window:
        too_long = [i for i, p in enumerate(ids) if len(p) + max_new_tokens > window]
        if too_long:
            longest = max(len(ids[i]) for i in too_long)
            raise SortedNetError(
                f"{len(too_long)} of {len(ids)} prompts (e.g. item {too_long[0]}, up to {longest} tokens) plus "
                f"max_new_tokens={max_new_tokens} exceed the model's max_position_embeddings={window}; lower "
                f"max_new_tokens or use shorter instructions"
            )
    return ids


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate_answers(
    net,
    tokenizer,
    meta: dict,
    name: str,
    exit_: int,
    items: list[dict],
    root: Path,
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> tuple[list[dict], dict, bool]:
    """``(lines, meta, reused)`` of exit ``exit_``'s answer file in ``root``, generated unless reusable."""
    style = prompt_style_of(meta, tokenizer)
    settings = answer_settings(meta.source, exit_, items, max_new_tokens, style)
    path = answers_path(root, name, exit_)
    prompts = encode(items, tokenizer, style, net, max_new_tokens)  # checked even when answers are reused
    found = reusable(path, settings)
    if found is not None:
        return (*found, True)
    device = next(net.parameters()).device
    _sync(device)
    began = time.perf_counter()
    generated = greedy_ids(net, tokenizer, prompts, exit_, max_new_tokens, batch_size)
    _sync(device)
    seconds = time.perf_counter() - began
    answers = tokenizer.batch_decode(generated, skip_special_tokens=True)
    tokens = sum(map(len, generated))
    lines = []
    for index, (item, answer, ids) in enumerate(zip(items, answers, generated, strict=True)):
        line = {"index": index, "instruction": item["instruction"], "input": item["input"], "output": answer}
        line.update(exit=exit_, ckpt=name, tokens=len(ids), eos=bool(ids) and ids[-1] == tokenizer.eos_token_id)
        if "reference" in item:
            line.update(reference=item["reference"], exact=answer.strip() == item["reference"].strip())
            line["rouge_l"] = rouge_l([answer], [item["reference"]])[0]
        lines.append(line)
    info = {
        "settings": settings,
        "name": name,
        "exit": exit_,
        "instructions": len(items),
        "seconds": seconds,
        "answer_tokens": tokens,
        "ms_per_token": 1000 * seconds / max(tokens, 1),
        "batch_size": batch_size,
        "device": str(device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mean_answer_tokens": tokens / len(lines),
        "eos_share": sum(line["eos"] for line in lines) / len(lines),
    }
    with_reference = [line for line in lines if "reference" in line]
    if with_reference:
        info["references"] = len(with_reference)
        info["exact_match"] = exact_match(
            [x["output"] for x in with_reference], [x["reference"] for x in with_reference]
        )
        info["rouge_l"] = sum(x["rouge_l"] for x in with_reference) / len(with_reference)
    meta_path(path).unlink(missing_ok=True)  # the old meta must not vouch for half-replaced answers
    write_text_atomically(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    write_text_atomically(meta_path(path), json.dumps(info, indent=2) + "\n")
    return lines, info, False


def generate_all(settings, paths: list[str], names: list[str], out, items: list[dict]) -> dict[tuple[str, int], tuple]:
    """``(lines, info, reused)`` of every (checkpoint, exit)'s answer file in the run directory ``out``, reused
    where valid; keyed by (name, exit)."""
    done = {}
    for ckpt in each_checkpoint(settings, paths, names):
        for e in ckpt.exits:
            lines, info, reused = generate_answers(
                ckpt.net, ckpt.tokenizer, ckpt.meta, ckpt.name, e, items, out.root, settings.max_new_tokens,
                settings.batch_size,
            )  # fmt: skip
            what = "reused" if reused else f"{info['seconds']:.1f} s"
            print(f"{ckpt.name} exit {e}: {answers_path(out.root, ckpt.name, e)} ({what})", file=sys.stderr)
            done[(ckpt.name, e)] = (lines, info, reused)
    return done


# What suite=generate reports of each answer file's info, in its table's order.
REPORTED = ("instructions", "seconds", "answer_tokens", "ms_per_token", "mean_answer_tokens", "eos_share")
PANELS = [
    ("ms_per_token", "ms per answer token"),
    ("mean_answer_tokens", "mean answer length (tokens)"),
    ("eos_share", "share of answers ending on EOS"),
    ("rouge_l", "ROUGE-L F vs reference"),
    ("exact_match", "exact match"),
]


def run(settings, paths: list[str], names: list[str], out) -> list[dict]:
    """suite=generate: answer files of every exit, and their timing and quality -> ``generate.csv/png``."""
    items = read_instructions(settings.instructions, settings.limit, settings.cache_dir)
    table = [
        {
            "name": name,
            "exit": e,
            **{key: info[key] for key in REPORTED},
            "exact_match": info.get("exact_match"),
            "rouge_l": info.get("rouge_l"),
            "reused": reused,
        }
        for (name, e), (_, info, reused) in generate_all(settings, paths, names, out, items).items()
    ]
    out.table("generate", table)
    out.figure("generate", plot_per_exit(table, PANELS, "greedy answers per exit"))
    columns = ["name", "exit", "instructions", "ms_per_token", "mean_answer_tokens", "eos_share", "rouge_l"]
    show_table(table, [*columns, "exact_match", "reused"], f"greedy answers (max_new_tokens={settings.max_new_tokens})")
    return table
