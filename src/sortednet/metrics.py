"""Answer metrics shared by evaluation, calibration and the benchmark: exact match and ROUGE-L."""

from __future__ import annotations

from collections.abc import Sequence

METRICS = ("exact_match", "rouge_l")


def rouge_l(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each answer against its reference, by Google's ``rouge-score`` (its tokenizer:
    lower case, alphanumeric tokens; Porter stemming, as in the summarisation and Super-NaturalInstructions
    evaluations)."""
    from rouge_score import rouge_scorer  # lazy: seconds to import (NLTK), and only ROUGE-L needs it

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, answer)["rougeL"].fmeasure for answer, ref in zip(answers, references, strict=True)]


def mean_score(answers: Sequence[str], references: Sequence[str], metric: str) -> float:
    """Mean ``metric`` of ``answers`` against ``references`` (0 for none): ``exact_match`` (stripped) or
    ``rouge_l``."""
    if metric == "exact_match":
        scores = [float(a.strip() == r.strip()) for a, r in zip(answers, references, strict=True)]
    elif metric == "rouge_l":
        scores = rouge_l(answers, references)
    else:
        raise ValueError(f"metric {metric!r}; one of {METRICS}")
    return sum(scores) / max(len(scores), 1)
