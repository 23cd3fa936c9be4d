"""Quality against cost per token: Pareto frontiers over the exits of one or more checkpoints."""

from __future__ import annotations

import math
from collections.abc import Sequence

# metric -> whether a higher value is better
METRICS = {"exact_match": True, "loss": False, "pandalm": True}


def pareto_frontier(costs: Sequence[float], qualities: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats, cheapest first.

    A point is on the frontier when every cheaper-or-equal point is strictly worse; of identical points
    only the first is kept. Points with a NaN cost or quality are never on it.
    """
    sign = 1.0 if higher_is_better else -1.0
    valid = [i for i in range(len(costs)) if not (math.isnan(costs[i]) or math.isnan(qualities[i]))]
    order = sorted(valid, key=lambda i: (costs[i], -sign * qualities[i], i))
    frontier, best = [], -math.inf
    for i in order:
        if sign * qualities[i] > best:
            frontier.append(i)
            best = sign * qualities[i]
    return frontier


def pareto_table(points: list[dict], metric: str) -> list[dict]:
    """``points`` (name, exit, ms_per_token, <metric>) with ``on_frontier`` (within its checkpoint) and
    ``on_global_frontier`` (over every checkpoint) added."""
    higher = METRICS[metric]
    costs = [p["ms_per_token"] for p in points]
    qualities = [p[metric] for p in points]
    overall = set(pareto_frontier(costs, qualities, higher))
    own: set[int] = set()
    for name in dict.fromkeys(p["name"] for p in points):
        mine = [i for i, p in enumerate(points) if p["name"] == name]
        own |= {mine[j] for j in pareto_frontier([costs[i] for i in mine], [qualities[i] for i in mine], higher)}
    return [{**p, "on_frontier": i in own, "on_global_frontier": i in overall} for i, p in enumerate(points)]


def plot_pareto(table: list[dict], metric: str, cost_label: str = "ms per token (greedy, batch 1)"):
    """One marker series per checkpoint, each point labelled with its exit; each checkpoint's frontier as a
    dashed line and the frontier over all checkpoints as a wide grey band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 5))
    overall = sorted((r for r in table if r["on_global_frontier"]), key=lambda r: r["ms_per_token"])
    if len(overall) > 1:
        axis.plot(
            [r["ms_per_token"] for r in overall], [r[metric] for r in overall],
            color="grey", alpha=0.3, linewidth=8, solid_capstyle="round", label="frontier (all)", zorder=1,
        )  # fmt: skip
    markers = "osD^v<>ph*"
    for k, name in enumerate(dict.fromkeys(r["name"] for r in table)):
        mine = [r for r in table if r["name"] == name]
        points = axis.scatter(
            [r["ms_per_token"] for r in mine], [r[metric] for r in mine], marker=markers[k % len(markers)],
            label=name, zorder=3,
        )  # fmt: skip
        color = points.get_facecolor()[0]
        front = sorted((r for r in mine if r["on_frontier"]), key=lambda r: r["ms_per_token"])
        axis.plot([r["ms_per_token"] for r in front], [r[metric] for r in front], "--", color=color, zorder=2)
        for r in mine:
            axis.annotate(
                str(r["exit"]), (r["ms_per_token"], r[metric]), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
    axis.set_xlabel(cost_label)
    axis.set_ylabel(metric + ("" if METRICS[metric] else " (lower is better)"))
    axis.set_title(f"{metric} against cost per token, labelled by exit")
    axis.grid(alpha=0.3)
    axis.legend()
    return figure
