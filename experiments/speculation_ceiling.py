"""What self-speculation can gain from each draft exit, from a checkpoint's measured latency profile.

Usage: python experiments/speculation_ceiling.py CKPT.latency.json [--target 1.3]

The model (an estimate, not a measurement): decoding is memory-bound, so a call through some layers costs their
share of a token whatever the number of positions. A line fitted to the profile's ms/token per exit splits a
token into a per-layer cost and a fixed part (head, final norm, embedding, call overhead), charged to every head
pass. A round of d drafts from exit E costs d + 1 passes through layers 1..E (the pending token and each draft),
d draft-head passes and one verifying call through layers E+1..L and the head; with acceptance a per draft it
commits (1 - a^(d+1)) / (1 - a) tokens. Printed per exit: c_E (its ms/token over the full model's), the ceiling
1 / c_E (every draft accepted, d unbounded) and the least acceptance (best d <= 8) that reaches ``--target``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def least_acceptance(per_layer: float, fixed: float, exit_: int, layers: int, target: float) -> tuple[float, int]:
    """The smallest acceptance (to 0.001) and its draft count whose speed-up over plain decoding reaches target."""
    draft_pass, verify = per_layer * exit_, per_layer * (layers - exit_) + fixed
    best = (float("inf"), 0)
    for d in range(1, 9):
        cost = (d + 1) * draft_pass + d * fixed + verify
        for a in np.linspace(0, 0.999, 1000):
            if (1 - a ** (d + 1)) / (1 - a) >= target * cost:
                best = min(best, (round(float(a), 3), d))
                break
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="the .latency.json written beside a checkpoint")
    parser.add_argument("--target", type=float, default=1.3, help="speed-up over plain decoding to reach")
    args = parser.parse_args()
    try:
        profiles = {key: {int(e): float(v) for e, v in entry["ms_per_token"].items()}
                    for key, entry in json.loads(args.profile.read_text()).items()}  # fmt: skip
        if not profiles or any(len(ms) < 2 for ms in profiles.values()):
            raise ValueError("the fit needs at least two exits")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        sys.exit(f"speculation_ceiling: {args.profile} is not a latency profile ({error!r}); give the "
                 "<ckpt>.latency.json that `generate exit=auto` or `evaluate suite=pareto` writes")  # fmt: skip
    for key, ms in profiles.items():
        layers = max(ms)
        per_layer, intercept = np.polyfit(list(ms), list(ms.values()), 1)
        full = per_layer * layers + intercept  # the fitted full-model token, in ms
        share = intercept / ms[layers]
        print(f"{key}: {per_layer:.2f} ms per layer, fixed {intercept:.1f} ms ({share:.0%} of a token)")
        print(f"| draft exit | c_E | ceiling | acceptance for {args.target}x (drafts per round) |")
        print("|---|---|---|---|")
        for exit_ in sorted(ms)[:-1]:
            c = ms[exit_] / ms[layers]
            a, d = least_acceptance(per_layer / full, intercept / full, exit_, layers, args.target)
            need = "out of reach" if d == 0 else f"{a:.2f} ({d})"
            print(f"| {exit_} | {c:.2f} | {1 / c:.2f}x | {need} |")


if __name__ == "__main__":
    main()
