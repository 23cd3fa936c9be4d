"""Pick dynamic-exit thresholds for a target quality drop on a validation set, trying only exits that pay."""

from __future__ import annotations

from collections.abc import Sequence

from sortednet.flops import layer_matmul_params
from sortednet.inference.decode import decode_all
from sortednet.metrics import mean_score
from sortednet.model import SortedLM

GRID = (0.999, 0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def unpaying_exits(
    net: SortedLM, exits: Sequence[int], thresholds: Sequence[float], exit_per_token: Sequence[Sequence[int]]
) -> list[int]:
    """The tried exits (threshold < 1) whose head cost more than their early exits saved in ``exit_per_token``.

    Cost model: decoding one token at a time is memory-bound, so a call costs the weights it reads — a decoder
    layer its matmul weights, a head its D x V — whatever the number of positions it runs. A token that exits
    at e skips the layer calls from e to the next tried exit e' (or L); the positions it skipped ride along
    later in calls that run anyway (the exact lazy fill). So exit e pays when ``fired(e) * (e' - e) * layer >
    reached(e) * head(e)``: every token that reaches e pays its head. (e' rather than L: the tokens e emits
    might have exited at e' too, so this saving is the one e alone is sure of.) Each row's first token comes
    from the prompt's pass and is not counted.
    """
    layer = layer_matmul_params(net.lm.config)
    depths = [d for row in exit_per_token for d in row[1:]]
    tried = [e for e, t in zip(exits, thresholds, strict=False) if t < 1.0]
    losing = []
    for e, deeper in zip(tried, [*tried[1:], net.num_layers], strict=True):
        reached, fired = sum(d >= e for d in depths), sum(d == e for d in depths)
        if fired * (deeper - e) * layer <= reached * net.head(e).weight.numel():
            losing.append(e)
    return losing


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
    """Thresholds for dynamic decoding: the lowest shared threshold (the fastest) whose ``metric`` on ``prompts``
    is at most ``max_drop`` below the full model's, trying :data:`GRID` from the top and stopping at the first
    that drops more; then 1.0 (not tried) for every exit whose head does not pay (:func:`unpaying_exits`).

    The paying set is found by decoding again without the exits that lost, until every exit left pays (a token
    an exit no longer takes may be taken by a deeper one, which then pays more). When no exit pays — or the
    pruned set drops quality by more than ``max_drop`` — every threshold is 1.0: early exit is off and dynamic
    decoding is plain decoding.

    ``metric``: ``exact_match`` (short answers, the embedded tasks) or ``rouge_l`` (mean ROUGE-L F-measure
    against the references: free-form answers such as Alpaca's). The table's ``exact_match``/``full_exact_match``
    columns hold the chosen metric, ``exits`` the exits tried. Returns the thresholds (one per exit below L) and
    the table of every setting decoded.
    """
    eos = tokenizer.eos_token_id
    below = list(exits[:-1])

    def score(outputs) -> float:
        texts = tokenizer.batch_decode(outputs, skip_special_tokens=True)
        return mean_score(texts, references, metric)

    full, _ = decode_all(net, prompts, max_new_tokens, eos, mode="exit")
    full_em = score(full)
    table = []

    def run(threshold: float, thresholds: list[float]) -> list[list[int]]:
        outputs, stats = decode_all(
            net, prompts, max_new_tokens, eos, mode="dynamic", exits=exits, thresholds=thresholds
        )
        n_tokens = sum(s["tokens"] for s in stats)
        mean_exit = sum(s["mean_exit"] * s["tokens"] for s in stats) / max(n_tokens, 1)
        agree = sum(o == f for o, f in zip(outputs, full, strict=True)) / len(full)
        tried = [e for e, t in zip(below, thresholds, strict=True) if t < 1.0]
        table.append({"threshold": threshold, "exact_match": score(outputs), "full_exact_match": full_em,
                      "agreement": agree, "mean_exit": mean_exit, "exits": tried})  # fmt: skip
        return [depths for s in stats for depths in s["exit_per_token"]]

    chosen, depths_of = 1.0, None
    for threshold in GRID:
        depths = run(threshold, [threshold] * len(below))
        if full_em - table[-1]["exact_match"] > max_drop:
            break  # lower thresholds only exit earlier: stop at the first that costs too much
        chosen, depths_of = threshold, depths
    thresholds = [chosen] * len(below)
    if depths_of is None:
        return thresholds, table
    while losing := unpaying_exits(net, exits, thresholds, depths_of):
        thresholds = [1.0 if e in losing else t for e, t in zip(below, thresholds, strict=True)]
        if all(t == 1.0 for t in thresholds):
            break
        depths_of = run(chosen, thresholds)
        if full_em - table[-1]["exact_match"] > max_drop:
            thresholds = [1.0] * len(below)
            break
    return thresholds, table
