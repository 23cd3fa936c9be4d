"""Quality against cost per token: Pareto frontiers over the exits of one or more checkpoints."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence

from sortednet.errors import SortedNetError
from sortednet.eval import pairwise
from sortednet.eval.checkpoints import each_checkpoint
from sortednet.eval.generation import generate_all, read_instructions
from sortednet.eval.loss import checkpoint_losses, loss_settings, recorded_loss
from sortednet.eval.output import pyplot, show_table
from sortednet.inference.latency import latency_profile

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
    plt = pyplot()

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


def _quality(settings, paths: list[str], names: list[str], out) -> dict[tuple[str, int], float]:
    """``{(name, exit): quality}`` of the metrics that do not need the checkpoints loaded one by one here."""
    if settings.metric == "pandalm":
        return pairwise.mean_scores(out.root)
    if settings.metric != "exact_match":
        return {}
    items = read_instructions(settings.instructions, settings.limit, settings.cache_dir)
    if not all("reference" in item for item in items):
        raise SortedNetError(
            "metric=exact_match needs instructions with reference outputs; pass instructions=FILE with an "
            "'output' per row (e.g. instructions=embedded), or use metric=loss"
        )
    return {key: info["exact_match"] for key, (_, info, _) in generate_all(settings, paths, names, out, items).items()}


def pareto_points(settings, paths: list[str], names: list[str], out) -> list[dict]:
    """(name, exit, ms_per_token, quality) for every exit of every checkpoint."""
    quality = _quality(settings, paths, names, out)
    costs: dict[tuple[str, int], float] = {}
    for ckpt in each_checkpoint(settings, paths, names):
        if settings.metric == "loss":
            recorded = recorded_loss(out.root, loss_settings(settings, ckpt.path), ckpt.exits)
            if recorded:
                print(f"{ckpt.name}: loss read from {out.root}/loss.csv (suite=loss, same settings)", file=sys.stderr)
            else:
                recorded = {row["exit"]: row["loss"] for row in checkpoint_losses(settings, ckpt)}
            quality.update({(ckpt.name, e): loss for e, loss in recorded.items()})
        device = next(ckpt.net.parameters()).device
        # only the exits asked for are timed (the cache beside the checkpoint then holds those)
        subset = dataclasses.replace(ckpt.meta, exits=ckpt.exits)
        profile, where, cached = latency_profile(ckpt.path, ckpt.net, ckpt.tokenizer, subset, device)
        print(f"{ckpt.name}: ms/token {'cached in' if cached else 'measured, saved to'} {where}", file=sys.stderr)
        for e in ckpt.exits:
            costs[(ckpt.name, e)] = profile[e]
    points = []
    for (name, e), cost in costs.items():
        if (name, e) not in quality:
            raise SortedNetError(f"no {settings.metric} for {name} exit {e}; run suite=pandalm with it among the rows")
        points.append({"name": name, "exit": e, "ms_per_token": cost, settings.metric: quality[(name, e)]})
    return points


def run(settings, paths: list[str], names: list[str], out) -> list[dict]:
    """suite=pareto: quality against measured ms/token of every exit, with each checkpoint's Pareto frontier
    -> ``pareto.csv/png``."""
    table = pareto_table(pareto_points(settings, paths, names, out), settings.metric)
    out.table("pareto", table)
    out.figure("pareto", plot_pareto(table, settings.metric))
    columns = ["name", "exit", "ms_per_token", settings.metric, "on_frontier", "on_global_frontier"]
    show_table(table, columns, f"{settings.metric} against ms/token (greedy, batch 1)")
    return table
