"""Pick dynamic-exit thresholds for a target quality drop on a validation set."""

from __future__ import annotations

from collections.abc import Sequence

from sortednet.inference.decode import decode_all
from sortednet.metrics import mean_score
from sortednet.model import SortedLM

GRID = (0.999, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def calibrate(
    net: SortedLM,
    tokenizer,
    prompts: Sequence[list[int]],
    references: Sequence[str],
    exits: Sequence[int],
    max_drop: float = 0.01,
    max_new_tokens: int = 32,
    metric: str = "exact_match",
) -> tuple[list[float], list[dict]]:
    """The lowest shared threshold (the fastest) whose ``metric`` on ``prompts`` is at most ``max_drop`` below
    the full model's, trying :data:`GRID` from the top and stopping at the first that drops more.

    ``metric``: ``exact_match`` (short answers, the embedded tasks) or ``rouge_l`` (mean ROUGE-L F-measure
    against the references: free-form answers such as Alpaca's). The table's ``exact_match``/``full_exact_match``
    columns hold the chosen metric. Returns the thresholds (one per exit below L) and the table of every
    threshold tried.
    """
    eos = tokenizer.eos_token_id

    def score(outputs) -> float:
        texts = tokenizer.batch_decode(outputs, skip_special_tokens=True)
        return mean_score(texts, references, metric)

    full, _ = decode_all(net, prompts, max_new_tokens, eos, mode="exit")
    full_em = score(full)
    table, chosen = [], 1.0
    for threshold in GRID:
        thresholds = [threshold] * (len(exits) - 1)
        outputs, stats = decode_all(
            net, prompts, max_new_tokens, eos, mode="dynamic", exits=exits, thresholds=thresholds
        )
        em = score(outputs)
        n_tokens = sum(s["tokens"] for s in stats)
        mean_exit = sum(s["mean_exit"] * s["tokens"] for s in stats) / max(n_tokens, 1)
        agree = sum(o == f for o, f in zip(outputs, full, strict=True)) / len(full)
        table.append({"threshold": threshold, "exact_match": em, "full_exact_match": full_em, "agreement": agree,
                      "mean_exit": mean_exit})  # fmt: skip
        if full_em - em > max_drop:
            break  # lower thresholds only exit earlier: stop at the first that costs too much
        chosen = threshold
    return [chosen] * (len(exits) - 1), table
