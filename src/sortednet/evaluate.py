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
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sortednet import cli
from sortednet.errors import SortedNetError
from sortednet.eval import agreement, analysis, generation, harness, loss, pairwise, pareto, triviaqa
from sortednet.eval.output import RunDir, start_wandb
from sortednet.hub import load_config
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
        try:
            load_config(cfg.judge, cfg.cache_dir)
        except SortedNetError as error:
            raise SortedNetError(
                f"judge={cfg.judge!r} is neither a local model directory nor a hub id that is cached or reachable; "
                f"pass judge=/path/to/judge (a Hugging Face causal LM directory)"
            ) from error
    return paths, names


RUNNERS = {
    "loss": loss.run,
    "generate": generation.run,
    "pandalm": pairwise.run,
    "triviaqa": triviaqa.run,
    "analysis": analysis.run,
    "pareto": pareto.run,
    "lm_eval": harness.run,
    "judge_agreement": agreement.run,
}


def default_out() -> Path:
    now = datetime.now()
    return Path("outputs") / "eval" / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")


# ---------------------------------------------------------------- entry


def evaluate(cfg: EvaluateConfig) -> list[dict]:
    """The whole command: check, open the run directory (and W&B), run the suite; its result rows."""
    paths, names = check_settings(cfg)
    root = Path(cfg.out).expanduser() if cfg.out else default_out()
    wandb_run, owned = start_wandb(cfg.wandb, root, f"eval-{cfg.suite}", dataclasses.asdict(cfg))
    try:
        out = RunDir(root, wandb_run)
        table = RUNNERS[cfg.suite](cfg, paths, names, out)
        print(f"results in {out.root}", file=sys.stderr)
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
        import datasets  # lazy: about 2 s to import; --help and argument errors need none of it

        datasets.disable_progress_bars()  # the embedded split is tokenized once, quietly
        evaluate(cfg)

    return cli.run(run, EvaluateConfig, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
