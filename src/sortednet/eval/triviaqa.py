"""TriviaQA closed-book scoring: the paper's case-sensitive exact match, and the usual normalized EM and F1.

Every metric first reduces a prediction to its answer line: surrounding whitespace stripped, cut at the first
newline (models that go on after the answer, e.g. with a next ``Question:``, are not penalised for it).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from sortednet.data.triviaqa import read_triviaqa
from sortednet.errors import SortedNetError
from sortednet.eval.checkpoints import each_checkpoint
from sortednet.eval.exits import greedy_answers
from sortednet.eval.output import json_lines_text, plot_per_exit, show_table
from sortednet.inference.load import prompt_style_of
from sortednet.io import write_text_atomically
from sortednet.prompts import encode_prompts

_PUNCTUATION = set(string.punctuation) | set("‘’´`“”")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def answer_line(prediction: str) -> str:
    """The prediction's first non-blank line, stripped."""
    return prediction.strip().split("\n", 1)[0].strip()


def normalize_answer(text: str) -> str:
    """SQuAD/TriviaQA-style: lower case, punctuation dropped, articles (a, an, the) dropped, whitespace collapsed."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_cased(prediction: str, aliases: Sequence[str]) -> bool:
    """The paper's metric: the answer line equals one of the aliases exactly (case-sensitive; aliases stripped)."""
    answer = answer_line(prediction)
    return any(answer == alias.strip() for alias in aliases)


def exact_match_normalized(prediction: str, aliases: Sequence[str]) -> bool:
    """The answer line equals one of the aliases after :func:`normalize_answer` on both."""
    answer = normalize_answer(answer_line(prediction))
    return any(answer == normalize_answer(alias) for alias in aliases)


def _token_f1(prediction_tokens: list[str], reference_tokens: list[str]) -> float:
    if not prediction_tokens or not reference_tokens:  # an empty side matches only an empty side
        return float(prediction_tokens == reference_tokens)
    common = sum((Counter(prediction_tokens) & Counter(reference_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(prediction_tokens), common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, aliases: Sequence[str]) -> float:
    """Token F1 of the normalized answer line against each normalized alias, the best over the aliases."""
    tokens = normalize_answer(answer_line(prediction)).split()
    return max((_token_f1(tokens, normalize_answer(alias).split()) for alias in aliases), default=0.0)


def score_answers(predictions: Sequence[str], alias_lists: Sequence[Sequence[str]]) -> dict:
    """Averages (fractions in [0, 1]) and counts over the examples: ``em_cased`` (the paper's), ``em``, ``f1``,
    ``n``, and the hit counts ``em_cased_hits`` and ``em_hits``. Averages of no examples are NaN."""
    if len(predictions) != len(alias_lists):
        raise SortedNetError(f"{len(predictions)} predictions for {len(alias_lists)} questions; give one per question")
    cased = sum(exact_match_cased(p, a) for p, a in zip(predictions, alias_lists, strict=True))
    normalized = sum(exact_match_normalized(p, a) for p, a in zip(predictions, alias_lists, strict=True))
    f1_sum = sum(f1(p, a) for p, a in zip(predictions, alias_lists, strict=True))
    n = len(predictions)
    mean = (lambda total: total / n) if n else (lambda total: float("nan"))  # noqa: E731
    return {
        "em_cased": mean(cased),
        "em": mean(normalized),
        "f1": mean(f1_sum),
        "n": n,
        "em_cased_hits": cased,
        "em_hits": normalized,
    }


def question_prompts(tokenizer, meta: dict, records: Sequence[dict]) -> list[list[int]]:
    """Token ids of each question in the checkpoint's prompt template, tokenized as training tokenizes prompts
    (the tokenizer's own special tokens, e.g. LLaMA's BOS, included)."""
    questions = [{"instruction": r["question"].strip()} for r in records]
    return encode_prompts(tokenizer, prompt_style_of(meta, tokenizer), questions)


def evaluate_exits(
    net,
    tokenizer,
    meta: dict,
    rows: Sequence[dict],
    exits: Sequence[int],
    max_new_tokens: int = 24,
    batch_size: int = 32,
) -> list[dict]:
    """Greedy closed-book answers of each exit to TriviaQA records (from :func:`sortednet.data.triviaqa.read_triviaqa`),
    scored. One dict per exit: ``exit``, the :func:`score_answers` fields, and ``examples`` (per question:
    ``id``, ``question``, ``answers``, ``prediction``, ``em_cased``, ``em``, ``f1``) for a JSONL dump."""
    if not rows:
        raise SortedNetError("no TriviaQA questions to evaluate; pass a file with at least one row")
    bad = [e for e in exits if not (isinstance(e, int) and 1 <= e <= net.num_layers)]
    if bad or not exits:
        raise SortedNetError(f"exits {list(exits)} must be layer counts in [1, {net.num_layers}]; fix the exits list")
    prompts = question_prompts(tokenizer, meta, rows)
    alias_lists = [r["answers"] for r in rows]
    results = []
    for e in exits:
        predictions = greedy_answers(net, tokenizer, prompts, e, max_new_tokens, batch_size)
        examples = [
            {
                "id": r.get("id"),
                "question": r["question"],
                "answers": r["answers"],
                "prediction": p,
                "em_cased": exact_match_cased(p, r["answers"]),
                "em": exact_match_normalized(p, r["answers"]),
                "f1": f1(p, r["answers"]),
            }
            for p, r in zip(predictions, rows, strict=True)
        ]
        results.append({"exit": e, **score_answers(predictions, alias_lists), "examples": examples})
    return results


def write_predictions(results: Sequence[dict], path: str | Path) -> Path:
    """The per-question predictions of :func:`evaluate_exits` as JSON Lines, one line per (exit, question)."""
    lines = [{"exit": result["exit"], **example} for result in results for example in result["examples"]]
    write_text_atomically(path, json_lines_text(lines))
    return Path(path)


def run(settings, paths: list[str], names: list[str], out) -> list[dict]:
    """suite=triviaqa: closed-book exact match and F1 per exit -> ``triviaqa.csv/png``,
    ``triviaqa_predictions.jsonl``."""
    if not settings.data:
        raise SortedNetError("suite=triviaqa needs data=PATH: a TriviaQA file (question + answer aliases) or hub id")
    questions = read_triviaqa(settings.data)[: settings.limit]
    table, results = [], []
    for ckpt in each_checkpoint(settings, paths, names):
        for result in evaluate_exits(
            ckpt.net, ckpt.tokenizer, ckpt.meta, questions, ckpt.exits,
            max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
        ):  # fmt: skip
            results.append({**result, "examples": [{"ckpt": ckpt.name, **x} for x in result["examples"]]})
            table.append({"name": ckpt.name, **{k: v for k, v in result.items() if k != "examples"}})
    write_predictions(results, out.path("triviaqa_predictions.jsonl"))
    out.table("triviaqa", table)
    panels = [("em_cased", "exact match (cased, any alias)"), ("em", "exact match (normalised)"), ("f1", "F1")]
    out.figure("triviaqa", plot_per_exit(table, panels, f"closed-book TriviaQA, {len(questions)} questions"))
    show_table(table, ["name", "exit", "em_cased", "em", "f1", "n"], "closed-book TriviaQA per exit")
    return table
