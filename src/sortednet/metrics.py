"""Answer metrics shared by evaluation, calibration and the benchmark: exact match and ROUGE-L."""

from __future__ import annotations

from collections.abc import Sequence

METRICS = ("exact_match", "rouge_l")


def rouge_l(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each answer against its reference, by Google's ``rouge-score`` (its tokenizer:
    lower case, alphanumeric tokens; Porter stemming, as in the summarisation and Super-NaturalInstructions
    evaluations)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, answer)["rougeL"].fmeasure for answer, ref in zip(answers, references, strict=True)]


def mean_score(answers: Sequence[str], references: Sequence[str], metric: str) -> float:
    """Mean ``metric`` of ``answers`` against ``references``: ``exact_match`` (stripped) or ``rouge_l``."""
    if metric == "exact_match":
        return sum(a.strip() == r.strip() for a, r in zip(answers, references, strict=True)) / len(references)
    if metric == "rouge_l":
        return sum(rouge_l(answers, references)) / len(references)
    raise ValueError(f"metric {metric!r}; one of {METRICS}")
