"""`python -m sortednet.evaluate suite=SUITE ckpt=PATH|[A,B,...] [key=value ...]`: per-exit evidence for checkpoints.

Suites (each writes CSV/JSON + PNG into the run directory `out` and prints a table to stdout):
  loss      per-exit validation loss and perplexity on response tokens (data=FILE|embedded)   -> loss.csv/png
  generate  per-exit greedy answers to an instruction set, with timing, mean answer length, share ending on
            EOS, and exact match + ROUGE-L when rows have a reference output  -> answers/<name>_exit<K>.jsonl,
            answers/<name>_exit<K>.meta.json, generate.csv/png
  pandalm   a judge model compares two answer sets in both orders; rows = exits of ckpt 1, columns = exits
            of ckpt 2 (of ckpt 1 when only one is given); or answers=[A.jsonl,B.jsonl]  -> pandalm.csv/png,
            pandalm_long.csv, pandalm_verdicts.jsonl
  triviaqa  closed-book TriviaQA exact match per exit (data=FILE)
  analysis  KL divergence and cosine similarity of each exit vs the last layer of ckpt 1 (and of ckpt 2)
  pareto    quality (metric=exact_match|loss|pandalm) against measured ms/token of every exit, with each
            checkpoint's Pareto frontier  -> pareto.csv/png
  lm_eval   lm-evaluation-harness tasks (tasks=[...], include_path=DIR for your own YAMLs) on each exit as the
            sub-model it is, through lm-eval's HFLM  -> lm_eval.csv/json/png
  judge_agreement  no ckpt: the judge (judge=, or verdicts=FILE made elsewhere) on PandaLM's 999 human-labelled
            pairs in both orders, against the human majority, beside PandaLM-7B's published verdicts
            -> judge_agreement.csv/json/png, judge_agreement_verdicts.jsonl
"""

from __future__ import annotations

import dataclasses
import gc
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sortednet import cli
from sortednet.errors import SortedNetError
from sortednet.io import check_creatable_dir

SUITES = ("loss", "generate", "pandalm", "triviaqa", "analysis", "pareto", "lm_eval", "judge_agreement")
PAIRS = ("all", "diagonal", "vs_last")
DEFAULT_JUDGE = "WeOpenML/PandaLM-7B-v1"
ANSWER_NEW_TOKENS, TRIVIAQA_NEW_TOKENS = 128, 24


@dataclass
class EvaluateConfig:
    suite: str = ""
    """loss | generate | pandalm | triviaqa | analysis | pareto | lm_eval | judge_agreement (see above)."""
    ckpt: Any = field(default="", metadata={"type": "str | list of str"})
    """A .ckpt of sortednet.train or a directory of sortednet.export/consolidate, or a list [A,B]."""
    names: list[str] | None = None
    """One name per checkpoint (default: the file stem; for last.ckpt the run directory's name)."""
    exits: Any = field(default="all", metadata={"type": "all | list of int"})
    """all (the checkpoint's exit set) or a list such as [2,4,8]."""
    out: str | None = None
    """The run directory (default outputs/eval/<date>/<time>); answer files in it are reused when their
    recorded settings match; other results never overwrite (name-2.csv is written instead)."""
    data: str | None = None
    """loss: an Alpaca-format file or embedded (default); triviaqa: a TriviaQA file; judge_agreement: PandaLM's
    testset-v1.json (default: in ~/.cache/sortednet/pandalm)."""
    instructions: str | None = None
    """generate/pandalm/analysis/pareto: an Alpaca-format .json/.jsonl (output = reference), embedded (the
    embedded validation split); default: PandaLM's test set in ~/.cache/sortednet/pandalm."""
    limit: int | None = None
    """Use only the first N rows/instructions; null: all of them."""
    max_new_tokens: int | None = None
    """The most tokens per answer; null: 24 for triviaqa, 128 otherwise."""
    batch_size: int = 8
    """Rows per forward pass or per batched generation."""
    max_length: int = 512
    """loss: tokens per example (longer ones lose the end of their response)."""
    metric: str = "exact_match"
    """pareto: the quality axis, exact_match | loss | pandalm."""
    judge: str = DEFAULT_JUDGE
    """pandalm, judge_agreement: a hub id or local Hugging Face causal LM directory."""
    judge_dtype: str = "auto"
    """The judge's dtype: auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16."""
    judge_max_new_tokens: int = 64
    """The most tokens of each judge verdict."""
    pairs: str = "all"
    """pandalm: all | diagonal (same exit) | vs_last (every row vs the last column)."""
    answers: list[str] | None = None
    """pandalm: two answer files [A.jsonl,B.jsonl] to judge instead of checkpoints' answers."""
    verdicts: str | None = None
    """judge_agreement: a JSON/JSONL file of {idx, verdict[, verdict_swapped]} (1, 2, 0/tie, null) instead of
    running a judge."""
    tasks: list[str] | None = None
    """lm_eval: lm-eval task names, e.g. [hellaswag,arc_easy], or tasks of include_path."""
    include_path: str | None = None
    """lm_eval: a directory of task YAML files (TaskManager(include_path=DIR))."""
    num_fewshot: int | None = None
    """lm_eval: few-shot examples per prompt; null: each task's own."""
    positions: int = 20
    """analysis: tokens of the reference's greedy continuation compared at each exit."""
    wandb: str | None = None
    """A W&B project to log tables and images to (offline without credentials); an active wandb.run is used
    without it."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda | cuda:N."""
    cache_dir: str | None = None
    """Where the embedded assets and hub downloads live (default: $SORTEDNET_CACHE or ~/.cache/sortednet)."""


@dataclass
class Checkpoint:
    """One checkpoint to evaluate, loaded by :meth:`load` and dropped by :meth:`release`."""

    name: str
    path: str
    net: object = None
    tokenizer: object = None
    meta: dict = field(default_factory=dict)
    exits: list[int] = field(default_factory=list)


# ---------------------------------------------------------------- settings


def default_name(path: str) -> str:
    """The file stem; for ``last.ckpt`` (and ``checkpoints/last.ckpt``) the run directory's name."""
    file = Path(path.rstrip("/")).expanduser()
    if file.suffix == ".ckpt" and file.stem == "last":
        run = file.parent.parent if file.parent.name == "checkpoints" else file.parent
        return run.name or "last"
    return file.stem if file.suffix == ".ckpt" else file.name


def check_settings(cfg: EvaluateConfig) -> tuple[list[str], list[str]]:
    """Everything checked before any model is loaded; returns the checkpoint paths and their names."""
    if cfg.suite not in SUITES:
        given = f"unknown suite={cfg.suite!r}" if cfg.suite else "no suite given"
        raise SortedNetError(f"{given}; pass suite={'|'.join(SUITES)}")
    paths = [str(p) for p in (cfg.ckpt if isinstance(cfg.ckpt, list) else [cfg.ckpt]) if p not in ("", None)]
    if cfg.suite == "judge_agreement" and paths:
        raise SortedNetError("suite=judge_agreement judges PandaLM's labelled pairs, not a checkpoint; drop ckpt=")
    if cfg.verdicts is not None and cfg.suite != "judge_agreement":
        raise SortedNetError("verdicts=FILE is for suite=judge_agreement; drop it")
    lm_eval_keys = [k for k in ("tasks", "include_path", "num_fewshot") if getattr(cfg, k) is not None]
    if lm_eval_keys and cfg.suite != "lm_eval":
        raise SortedNetError(f"{', '.join(lm_eval_keys)} are for suite=lm_eval; drop them")
    if cfg.num_fewshot is not None and cfg.num_fewshot < 0:
        raise SortedNetError(f"num_fewshot={cfg.num_fewshot} must be 0 or more (or null for each task's own)")
    if not paths and not (cfg.suite == "pandalm" and cfg.answers) and cfg.suite != "judge_agreement":
        raise SortedNetError(
            "no checkpoint given; pass ckpt=PATH or ckpt=[A,B] (.ckpt of sortednet.train or export dir)"
        )
    for path in paths:
        if not Path(path).expanduser().exists():
            raise SortedNetError(f"checkpoint {path!r} not found; pass ckpt=PATH.ckpt or an exported directory")
    names = list(cfg.names) if cfg.names is not None else [default_name(p) for p in paths]
    if len(names) != len(paths):
        raise SortedNetError(f"names has {len(names)} entries for {len(paths)} checkpoints; give one name per ckpt")
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9._+-]+", n)]
    if bad:
        raise SortedNetError(f"names {bad} must be letters, digits and . _ + - only (they become file names)")
    if len(set(names)) != len(names):
        raise SortedNetError(f"checkpoint names {names} repeat; pass names=[a,b,...] with distinct names")
    if isinstance(cfg.exits, int) and not isinstance(cfg.exits, bool):
        cfg.exits = [cfg.exits]
    if cfg.exits != "all" and not (isinstance(cfg.exits, list) and all(type(e) is int for e in cfg.exits)):
        raise SortedNetError(f"exits={cfg.exits!r}; pass exits=all or a list such as exits=[2,4,8]")
    if cfg.metric not in ("exact_match", "loss", "pandalm"):
        raise SortedNetError(f"unknown metric={cfg.metric!r}; use exact_match, loss or pandalm")
    if cfg.pairs not in PAIRS:
        raise SortedNetError(f"unknown pairs={cfg.pairs!r}; use {', '.join(PAIRS)}")
    if cfg.max_new_tokens is None:
        cfg.max_new_tokens = TRIVIAQA_NEW_TOKENS if cfg.suite == "triviaqa" else ANSWER_NEW_TOKENS
    for key in ("max_new_tokens", "batch_size", "max_length", "judge_max_new_tokens", "positions"):
        if getattr(cfg, key) < 1:
            raise SortedNetError(f"{key}={getattr(cfg, key)} must be at least 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise SortedNetError(f"limit={cfg.limit} must be at least 1 (or null for every row)")
    if cfg.answers is not None and cfg.suite != "pandalm":
        raise SortedNetError("answers=[...] is for suite=pandalm; drop it")
    if cfg.out:
        check_creatable_dir(Path(cfg.out).expanduser(), "out")
    if cfg.suite == "pandalm":  # before any answer is generated, not after
        from sortednet.hub import load_config

        try:
            load_config(cfg.judge, cfg.cache_dir)
        except SortedNetError as error:
            raise SortedNetError(
                f"judge={cfg.judge!r} is neither a local model directory nor a hub id that is cached or reachable; "
                f"pass judge=/path/to/judge (a Hugging Face causal LM directory)"
            ) from error
    return paths, names


def requested_exits(cfg: EvaluateConfig, meta: dict, name: str) -> list[int]:
    available = [int(e) for e in meta["exits"]]
    if cfg.exits == "all":
        return available
    wanted = list(cfg.exits)
    missing = [e for e in wanted if e not in available]
    if missing:
        raise SortedNetError(f"exits {missing} are not exits of {name} ({meta['source']}); its exits are {available}")
    return sorted(set(wanted))


def resolve_device(name: str):
    from sortednet.inference.load import resolve_device as resolve

    return resolve(name)


def checkpoints(cfg: EvaluateConfig, paths: list[str], names: list[str]) -> Iterator[Checkpoint]:
    """Each checkpoint loaded in turn (one in memory at a time), with its exits checked."""
    from sortednet.inference.load import load_sorted

    device = resolve_device(cfg.device)
    for path, name in zip(paths, names, strict=True):
        net, tokenizer, meta = load_sorted(path, cfg.cache_dir, device)
        ckpt = Checkpoint(name, path, net, tokenizer, meta, requested_exits(cfg, meta, name))
        try:
            yield ckpt
        finally:
            ckpt.net = ckpt.tokenizer = None
            del net, tokenizer
            _free_memory()


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def default_out() -> Path:
    now = datetime.now()
    return Path("outputs") / "eval" / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")


def _show(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- suites


def loss_settings(cfg, ckpt_path: str) -> dict:
    """What a checkpoint's per-exit loss depends on, recorded in ``loss.csv`` so ``suite=pareto metric=loss``
    in the same ``out`` reads it instead of computing it again."""
    from sortednet.eval.generation import checkpoint_stamp

    data = cfg.data or "embedded"
    return {
        "data": data,
        "data_stamp": checkpoint_stamp(data) if Path(data).expanduser().is_file() else "",
        "max_length": cfg.max_length,
        "limit": "" if cfg.limit is None else cfg.limit,
        "ckpt": ckpt_path,
        "ckpt_stamp": checkpoint_stamp(ckpt_path),
    }


def run_loss(cfg, paths, names, run) -> list[dict]:
    from sortednet.eval.loss import loss_suite
    from sortednet.eval.output import plot_per_exit

    data = cfg.data or "embedded"
    table = []
    for ckpt in checkpoints(cfg, paths, names):
        rows = loss_suite(
            ckpt.net, ckpt.tokenizer, ckpt.meta, ckpt.exits, data, cfg.batch_size,
            max_length=cfg.max_length, cache_dir=cfg.cache_dir, limit=cfg.limit,
        )  # fmt: skip
        table += [{"name": ckpt.name, **row, **loss_settings(cfg, ckpt.path)} for row in rows]
    run.table("loss", table)
    run.figure("loss", plot_per_exit(table, [("loss", "validation loss (response tokens)")], f"per-exit loss, {data}"))
    _show(_table(table, ["name", "exit", "loss", "ppl", "tokens", "rows"], f"per-exit loss on {data}"))
    return table


def generate_all(cfg, paths, names, run, items) -> dict[tuple[str, int], tuple[list[dict], dict, bool]]:
    """Answer files of every (checkpoint, exit), reused where valid; keyed by (name, exit)."""
    from sortednet.eval.generation import answers_path, generate_answers

    done = {}
    for ckpt in checkpoints(cfg, paths, names):
        for e in ckpt.exits:
            lines, info, reused = generate_answers(
                ckpt.net, ckpt.tokenizer, ckpt.meta, ckpt.name, e, items, run.root, cfg.max_new_tokens, cfg.batch_size
            )
            what = "reused" if reused else f"{info['seconds']:.1f} s"
            print(f"{ckpt.name} exit {e}: {answers_path(run.root, ckpt.name, e)} ({what})", file=sys.stderr)
            done[(ckpt.name, e)] = (lines, info, reused)
    return done


def run_generate(cfg, paths, names, run) -> list[dict]:
    from sortednet.eval.generation import read_instructions
    from sortednet.eval.output import plot_per_exit

    items = read_instructions(cfg.instructions, cfg.limit, cfg.cache_dir)
    table = []
    for (name, e), (_, info, reused) in generate_all(cfg, paths, names, run, items).items():
        table.append(
            {
                "name": name,
                "exit": e,
                "instructions": info["instructions"],
                "seconds": info["seconds"],
                "answer_tokens": info["answer_tokens"],
                "ms_per_token": info["ms_per_token"],
                "mean_answer_tokens": info["mean_answer_tokens"],
                "eos_share": info["eos_share"],
                "exact_match": info.get("exact_match"),
                "rouge_l": info.get("rouge_l"),
                "reused": reused,
            }
        )
    run.table("generate", table)
    panels = [
        ("ms_per_token", "ms per answer token"),
        ("mean_answer_tokens", "mean answer length (tokens)"),
        ("eos_share", "share of answers ending on EOS"),
        ("rouge_l", "ROUGE-L F vs reference"),
        ("exact_match", "exact match"),
    ]
    run.figure("generate", plot_per_exit(table, panels, "greedy answers per exit"))
    columns = ["name", "exit", "instructions", "ms_per_token", "mean_answer_tokens", "eos_share", "rouge_l"]
    columns += ["exact_match", "reused"]
    _show(_table(table, columns, f"greedy answers (max_new_tokens={cfg.max_new_tokens})"))
    return table


def _pairs(rows: list[str], cols: list[str], pairs: str) -> list[tuple[str, str]]:
    if pairs == "vs_last":
        return [(r, cols[-1]) for r in rows]
    if pairs == "diagonal":
        exit_of = {c.rsplit("@", 1)[-1]: c for c in cols}
        chosen = [(r, exit_of[r.rsplit("@", 1)[-1]]) for r in rows if r.rsplit("@", 1)[-1] in exit_of]
        if not chosen:
            raise SortedNetError("pairs=diagonal found no exit shared by the two answer sets; use pairs=all")
        return chosen
    return [(r, c) for r in rows for c in cols]


def _check_answer_sets(first: list[dict], second: list[dict], first_name: str, second_name: str) -> None:
    if len(first) != len(second):
        raise SortedNetError(
            f"answer set {second_name!r} has {len(second)} answers for {len(first)} instructions (those of "
            f"{first_name!r}); judge answer files generated from the same instruction set"
        )
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        if (a.get("instruction"), a.get("input") or "") != (b.get("instruction"), b.get("input") or ""):
            raise SortedNetError(
                f"answer set {second_name!r} row {i} answers {b.get('instruction')!r} but {first_name!r} row {i} "
                f"answers {a.get('instruction')!r}; judge answer files of the same instructions, in the same order"
            )


def run_pandalm(cfg, paths, names, run) -> list[dict]:
    from sortednet.eval import pandalm
    from sortednet.eval.generation import read_answer_file, read_instructions
    from sortednet.eval.output import free_path
    from sortednet.io import write_text_atomically

    if cfg.answers is not None:
        if len(cfg.answers) != 2:
            raise SortedNetError(f"answers has {len(cfg.answers)} files; give two: answers=[A.jsonl,B.jsonl]")
        sets = {Path(p).stem: read_answer_file(Path(p).expanduser()) for p in cfg.answers}
        if len(sets) != 2:
            raise SortedNetError("the two answer files have the same name; rename one")
        (row_label, first), (col_label, second) = sets.items()
        _check_answer_sets(first, second, row_label, col_label)  # before a judge of many GB is loaded
        items = [{"instruction": x.get("instruction"), "input": x.get("input") or ""} for x in first]
        rows, cols = {row_label: first}, {col_label: sets[col_label]}
    else:
        items = read_instructions(cfg.instructions, cfg.limit, cfg.cache_dir)
        answers = generate_all(cfg, paths, names, run, items)
        col_name = names[1] if len(names) > 1 else names[0]
        rows = {f"{n}@{e}": lines for (n, e), (lines, _, _) in answers.items() if n == names[0]}
        cols = {f"{n}@{e}": lines for (n, e), (lines, _, _) in answers.items() if n == col_name}
    judge, tokenizer = _load_judge(cfg)
    records = []
    for row, col in _pairs(list(rows), list(cols), cfg.pairs):
        records += pandalm.judge_matrix(
            judge, tokenizer, items, {row: rows[row]}, {col: cols[col]},
            batch_size=cfg.batch_size, max_new_tokens=cfg.judge_max_new_tokens,
        )  # fmt: skip
    grid = free_path(run.root / "pandalm.csv")
    long = free_path(run.root / f"{grid.stem}_long.csv")
    pandalm.write_matrix_csv(records, grid, long)
    verdicts = free_path(run.root / f"{grid.stem}_verdicts.jsonl")
    write_text_atomically(
        verdicts,
        "".join(json.dumps({"row": r["row"], "col": r["col"], **d}) + "\n" for r in records for d in r["details"]),
    )
    heatmap = pandalm.plot_heatmap(records, free_path(run.root / f"{grid.stem}.png"), title=f"judge: {cfg.judge}")
    table = [{k: v for k, v in r.items() if k != "details"} for r in records]
    run.log_table("pandalm", table)
    run.image("pandalm", heatmap)
    columns = ["row", "col", "score", "wins", "losses", "ties", "unparseable"]
    _show(_table(table, columns, f"PandaLM-style judging ({cfg.judge}), both orders: score = (wins - losses) / total"))
    return table


def _load_judge(cfg):
    from sortednet.eval import agreement, pandalm

    if not agreement.has_report(cfg.judge, cfg.cache_dir):
        print(
            f"sortednet: warning: judge {cfg.judge} has no agreement report against human verdicts (none at "
            f"{agreement.report_path(cfg.judge, cfg.cache_dir)}); measure it: suite=judge_agreement judge={cfg.judge}",
            file=sys.stderr,
        )
    device = resolve_device(cfg.device)
    dtype = cfg.judge_dtype if cfg.judge_dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    return pandalm.load_judge(cfg.judge, device, dtype=dtype, cache_dir=cfg.cache_dir)


def run_judge_agreement(cfg, paths, names, run) -> list[dict]:
    """The judge's (or a verdict file's) agreement with PandaLM's human majority, beside PandaLM-7B's."""
    from sortednet.eval import agreement
    from sortednet.eval.output import free_path
    from sortednet.io import write_text_atomically

    pairs = agreement.read_labelled_pairs(cfg.data, cfg.cache_dir)[: cfg.limit]
    idx = {p["idx"] for p in pairs}
    if cfg.verdicts:
        label = Path(cfg.verdicts).name
        verdicts = {i: v for i, v in agreement.read_verdicts(cfg.verdicts).items() if i in idx or cfg.limit is None}
    else:
        label = cfg.judge
        judge, tokenizer = _load_judge(cfg)
        records = agreement.judge_verdicts(judge, tokenizer, pairs, cfg.batch_size, cfg.judge_max_new_tokens)
        path = free_path(run.root / "judge_agreement_verdicts.jsonl")
        write_text_atomically(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        verdicts = {r["idx"]: (r["verdict"], r["verdict_swapped"], True) for r in records}
    judged = {label: verdicts}
    testset = Path(cfg.data).expanduser() if cfg.data else agreement.default_testset(cfg.cache_dir)
    reference = agreement.reference_verdicts(testset, set(verdicts))
    if reference is not None:
        judged[f"{agreement.PUBLISHED_JUDGE} (published)"] = reference
    table, confusions = agreement.report_rows(pairs, judged)
    report = {"testset": str(testset), "rows": table, "confusion": confusions}
    run.table("judge_agreement", table)
    run.json("judge_agreement", report)
    run.figure("judge_agreement", agreement.plot_confusions(confusions))
    if not cfg.verdicts and cfg.limit is None:  # the judge's standing report, looked up by suite=pandalm
        kept = agreement.report_path(cfg.judge, cfg.cache_dir)
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(kept, json.dumps({"judge": cfg.judge, **report}, indent=2) + "\n")
        print(f"agreement report of {cfg.judge} kept at {kept}", file=sys.stderr)
    columns = ["judge", "orders", "pairs", "accuracy", "macro_f1", "inconsistent_share", "unparseable_share"]
    _show(_table(table, columns, "agreement with the human majority (ties as a class)"))
    for name, confusion in confusions.items():
        _show(agreement.format_confusion(name, confusion))
    return table


def run_triviaqa(cfg, paths, names, run) -> list[dict]:
    from sortednet.data.triviaqa import read_triviaqa
    from sortednet.eval import triviaqa
    from sortednet.eval.output import free_path, plot_per_exit

    if not cfg.data:
        raise SortedNetError("suite=triviaqa needs data=PATH: a TriviaQA file (question + answer aliases) or hub id")
    questions = read_triviaqa(cfg.data)[: cfg.limit]
    table, results = [], []
    for ckpt in checkpoints(cfg, paths, names):
        for result in triviaqa.evaluate_exits(
            ckpt.net, ckpt.tokenizer, ckpt.meta, questions, ckpt.exits,
            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
        ):  # fmt: skip
            results.append({**result, "examples": [{"ckpt": ckpt.name, **x} for x in result["examples"]]})
            table.append({"name": ckpt.name, **{k: v for k, v in result.items() if k != "examples"}})
    triviaqa.write_predictions(results, free_path(run.root / "triviaqa_predictions.jsonl"))
    run.table("triviaqa", table)
    panels = [("em_cased", "exact match (cased, any alias)"), ("em", "exact match (normalised)"), ("f1", "F1")]
    run.figure("triviaqa", plot_per_exit(table, panels, f"closed-book TriviaQA, {len(questions)} questions"))
    _show(_table(table, ["name", "exit", "em_cased", "em", "f1", "n"], "closed-book TriviaQA per exit"))
    return table


def run_lm_eval(cfg, paths, names, run) -> list[dict]:
    """lm-eval's tasks on every exit of every checkpoint: an exit x task table, lm-eval's result dicts, a plot."""
    from sortednet.eval import harness
    from sortednet.eval.output import plot_per_exit

    manager = harness.task_manager(cfg.include_path)  # lm-eval and the tasks are checked before a model loads
    tasks = harness.check_tasks(manager, cfg.tasks or [])
    table, results = [], {}
    for ckpt in checkpoints(cfg, paths, names):
        for e in ckpt.exits:
            result = harness.evaluate_exit(
                ckpt.net, ckpt.tokenizer, e, tasks, manager,
                num_fewshot=cfg.num_fewshot, limit=cfg.limit, batch_size=cfg.batch_size,
            )  # fmt: skip
            results.setdefault(ckpt.name, {})[str(e)] = result
            table.append({"name": ckpt.name, "exit": e, **harness.table_row(result)})
            print(f"{ckpt.name} exit {e}: lm-eval done", file=sys.stderr)
    run.table("lm_eval", table)
    settings = {"tasks": tasks, "num_fewshot": cfg.num_fewshot, "limit": cfg.limit, "include_path": cfg.include_path}
    run.json("lm_eval", {**settings, "results": results})
    metrics = harness.main_metrics(next(iter(next(iter(results.values())).values())))
    panels = [(f"{task}/{metric}", f"{task}: {metric}") for task, metric in metrics.items()]
    run.figure("lm_eval", plot_per_exit(table, panels, "lm-evaluation-harness per exit"))
    _show(_table(table, ["name", "exit", *(key for key, _ in panels)], "lm-evaluation-harness per exit"))
    return table


def run_analysis(cfg, paths, names, run) -> list[dict]:
    """Exits of ckpt 1 against its own last layer, and against the last layer of ckpt 2 when given."""
    from sortednet.eval import analysis
    from sortednet.eval.generation import encode, read_instructions
    from sortednet.eval.output import free_path
    from sortednet.inference.load import load_sorted, prompt_style_of

    if len(paths) > 2:
        raise SortedNetError(f"suite=analysis compares one checkpoint with its own or a second one; got {len(paths)}")
    items = read_instructions(cfg.instructions, cfg.limit, cfg.cache_dir)
    device = resolve_device(cfg.device)
    net, tokenizer, meta = load_sorted(paths[0], cfg.cache_dir, device)
    exits = requested_exits(cfg, meta, names[0])
    prompts = encode(items, tokenizer, prompt_style_of(meta, tokenizer), net, cfg.positions)
    common = dict(positions=cfg.positions, batch_size=cfg.batch_size)
    table = [
        {"label": f"vs {names[0]}@{net.num_layers}", **row}
        for row in analysis.exit_similarity(net, tokenizer, prompts, exits, **common)
    ]
    if len(paths) == 2:
        other, other_tokenizer, _ = load_sorted(paths[1], cfg.cache_dir, device)
        rows = analysis.exit_similarity(net, tokenizer, prompts, exits, reference=(other, other_tokenizer), **common)
        table += [{"label": f"vs {names[1]}@{other.num_layers}", **row} for row in rows]
    table = [{"name": names[0], **row} for row in table]
    run.table("analysis", table)
    title = f"exits of {names[0]} vs last layers, {len(items)} prompts"
    run.image("analysis", analysis.plot_curves(table, free_path(run.root / "analysis.png"), title=title))
    first = [r for r in table if r["position"] == 0]
    _show(_table(first, ["label", "exit", "kl", "cosine", "n"], "KL and cosine at the first generated position"))
    return table


def pareto_points(cfg, paths, names, run) -> list[dict]:
    """(name, exit, ms_per_token, quality) for every exit of every checkpoint."""
    from sortednet.inference.latency import latency_profile

    quality: dict[tuple[str, int], float] = {}
    if cfg.metric == "exact_match":
        from sortednet.eval.generation import read_instructions

        items = read_instructions(cfg.instructions, cfg.limit, cfg.cache_dir)
        if not all("reference" in item for item in items):
            raise SortedNetError(
                "metric=exact_match needs instructions with reference outputs; pass instructions=FILE with an "
                "'output' per row (e.g. instructions=embedded), or use metric=loss"
            )
        for key, (_, info, _) in generate_all(cfg, paths, names, run, items).items():
            quality[key] = info["exact_match"]
    elif cfg.metric == "pandalm":
        quality = _pandalm_quality(run.root)
    costs: dict[tuple[str, int], float] = {}
    for ckpt in checkpoints(cfg, paths, names):
        if cfg.metric == "loss":
            recorded = _recorded_loss(run.root, loss_settings(cfg, ckpt.path), ckpt.exits)
            if recorded:
                print(f"{ckpt.name}: loss read from {run.root}/loss.csv (suite=loss, same settings)", file=sys.stderr)
            else:
                from sortednet.eval.loss import loss_suite

                rows = loss_suite(
                    ckpt.net, ckpt.tokenizer, ckpt.meta, ckpt.exits, cfg.data or "embedded", cfg.batch_size,
                    max_length=cfg.max_length, cache_dir=cfg.cache_dir, limit=cfg.limit,
                )  # fmt: skip
                recorded = {row["exit"]: row["loss"] for row in rows}
            quality.update({(ckpt.name, e): loss for e, loss in recorded.items()})
        device = next(ckpt.net.parameters()).device
        # only the exits asked for are timed (the cache beside the checkpoint then holds those)
        subset = {**ckpt.meta, "exits": ckpt.exits}
        profile, where, cached = latency_profile(ckpt.path, ckpt.net, ckpt.tokenizer, subset, device)
        print(f"{ckpt.name}: ms/token {'cached in' if cached else 'measured, saved to'} {where}", file=sys.stderr)
        for e in ckpt.exits:
            costs[(ckpt.name, e)] = profile[e]
    points = []
    for (name, e), cost in costs.items():
        if (name, e) not in quality:
            raise SortedNetError(f"no {cfg.metric} for {name} exit {e}; run suite=pandalm with it among the rows")
        points.append({"name": name, "exit": e, "ms_per_token": cost, cfg.metric: quality[(name, e)]})
    return points


def _recorded_loss(root: Path, settings: dict, exits: list[int]) -> dict[int, float] | None:
    """``{exit: loss}`` from ``loss.csv`` in ``root`` when suite=loss wrote every exit asked for under the same
    settings (rows, max_length, limit, the checkpoint and data files unchanged); else None."""
    import csv

    path = root / "loss.csv"
    if not path.is_file():
        return None
    wanted = {key: str(value) for key, value in settings.items()}
    with path.open(encoding="utf-8") as handle:
        found = {
            int(record["exit"]): float(record["loss"])
            for record in csv.DictReader(handle)
            if all(record.get(key) == value for key, value in wanted.items())
        }
    return {e: found[e] for e in exits} if all(e in found for e in exits) else None


def _pandalm_quality(root: Path) -> dict[tuple[str, int], float]:
    """Each row answer set's mean score over the columns of ``pandalm_long.csv`` in the run directory."""
    import csv

    path = root / "pandalm_long.csv"
    if not path.is_file():
        raise SortedNetError(f"metric=pandalm reads {path}; run suite=pandalm with out={root} first")
    scores: dict[tuple[str, int], list[float]] = {}
    with path.open(encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            name, _, exit_ = record["row"].rpartition("@")
            if exit_.isdigit():
                scores.setdefault((name, int(exit_)), []).append(float(record["score"]))
    return {key: sum(v) / len(v) for key, v in scores.items()}


def run_pareto(cfg, paths, names, run) -> list[dict]:
    from sortednet.eval.pareto import pareto_table, plot_pareto

    table = pareto_table(pareto_points(cfg, paths, names, run), cfg.metric)
    run.table("pareto", table)
    run.figure("pareto", plot_pareto(table, cfg.metric))
    columns = ["name", "exit", "ms_per_token", cfg.metric, "on_frontier", "on_global_frontier"]
    _show(_table(table, columns, f"{cfg.metric} against ms/token (greedy, batch 1)"))
    return table


RUNNERS = {
    "loss": run_loss,
    "generate": run_generate,
    "pandalm": run_pandalm,
    "triviaqa": run_triviaqa,
    "analysis": run_analysis,
    "pareto": run_pareto,
    "lm_eval": run_lm_eval,
    "judge_agreement": run_judge_agreement,
}


def _table(rows, columns, title) -> str:
    from sortednet.eval.output import format_table

    return format_table(rows, columns, title)


# ---------------------------------------------------------------- entry


def evaluate(cfg: EvaluateConfig) -> list[dict]:
    """The whole command: check, open the run directory (and W&B), run the suite; its result rows."""
    from sortednet.eval.output import RunDir, start_wandb

    paths, names = check_settings(cfg)
    root = Path(cfg.out).expanduser() if cfg.out else default_out()
    wandb_run, owned = start_wandb(cfg.wandb, root, f"eval-{cfg.suite}", dataclasses.asdict(cfg))
    try:
        run = RunDir(root, wandb_run)
        table = RUNNERS[cfg.suite](cfg, paths, names, run)
        print(f"results in {run.root}", file=sys.stderr)
        return table
    finally:
        if owned:
            offline = wandb_run.settings.mode in ("offline", "dryrun")
            where = Path(wandb_run.dir).parent
            wandb_run.finish()
            print(f"W&B offline run {where}; upload it with: wandb sync {where}" if offline else f"W&B run {where}",
                  file=sys.stderr)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    def run(cfg: EvaluateConfig) -> None:
        cli.quiet_transformers()
        import datasets

        datasets.disable_progress_bars()  # the embedded split is tokenized once, quietly
        evaluate(cfg)

    return cli.run(run, EvaluateConfig, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
