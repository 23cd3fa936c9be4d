"""Which exits a training step takes its loss at, and with what weights.

The paper's SoFT uses every exit of the set at every step with equal weights. The variants here come
from the wider literature: SortedNet samples a few sub-models per step; early-exit training schedules
rotate through the exits, or switch shallow exits on gradually. The deepest exit is always part of the
step, so every decoder layer and the shared head receive gradient at every step (nothing is unused
under DDP or FSDP). Every rank computes the same set for the same step.

Nothing in this file knows about Lightning or Hydra.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sortednet.config import LossConfig
from sortednet.errors import SortedNetError

CURRICULA = ("none", "rotational", "gradual")


def spread_exits(num_layers: int, k: int) -> list[int]:
    """``k`` exits spread evenly over the depth, the last always included: 8 layers, k=2 -> [4, 8]."""
    return sorted({round(num_layers * (i + 1) / k) for i in range(k)})


class ExitSchedule:
    """The exits and weights of each step, for a sorted list of ``exits`` trained over ``total_steps``."""

    def __init__(self, exits: Sequence[int], config: LossConfig, total_steps: int = 1):
        self.exits, self.config, self.total_steps = list(exits), config, max(1, total_steps)
        n = len(self.exits)
        if config.curriculum not in CURRICULA:
            raise SortedNetError(f"unknown loss.curriculum {config.curriculum!r}; use one of {', '.join(CURRICULA)}")
        if config.sample is not None and not 1 <= config.sample <= n:
            raise SortedNetError(f"loss.sample={config.sample} must be between 1 and the {n} exits of the set")
        if not 0.0 <= config.distill <= 1.0:
            raise SortedNetError(f"loss.distill={config.distill} is a weight in [0, 1]; e.g. loss.distill=0.5")
        if config.distill and n < 2:
            raise SortedNetError(
                f"loss.distill teaches the exits below the deepest, but this run trains exits {self.exits} only; "
                f"use objective=soft with two exits or more, or drop loss.distill"
            )
        weights = config.weights
        if isinstance(weights, str) and weights not in ("uniform", "depth"):
            raise SortedNetError(f"unknown loss.weights {weights!r}; use uniform, depth or a list of {n} numbers")
        if not isinstance(weights, str) and (len(weights) != n or min(weights) < 0 or sum(weights) <= 0):
            raise SortedNetError(
                f"loss.weights has {len(weights)} values for exits {self.exits}; give {n} non-negative numbers"
            )
        self.deepest, self.shallower = self.exits[-1], self.exits[:-1]

    def active(self, step: int) -> list[int]:
        """The exits whose loss step ``step`` takes (sorted; the deepest always included)."""
        pool = self.shallower
        curriculum, k = self.config.curriculum, self.config.sample
        if curriculum == "gradual":  # shallower exits switch on one by one, deep to shallow
            ramp = max(1, round(self.config.ramp_fraction * self.total_steps))
            n_on = min(len(pool), len(pool) * step // ramp)
            pool = pool[len(pool) - n_on :]
        if curriculum == "rotational" and pool:  # a window of k-1 shallower exits moving by k-1 every step
            width = (k or 2) - 1
            start = step * width
            pool = sorted({pool[(start + j) % len(pool)] for j in range(width)})
        elif k is not None and len(pool) > k - 1:  # SortedNet-style: k-1 shallower exits drawn at random
            pool = sorted(random.Random(self.config.seed * 1_000_003 + step).sample(pool, k - 1))
        return [*pool, self.deepest]

    def weights(self, active: Sequence[int]) -> list[float]:
        """Loss weights of the ``active`` exits (normalised by the loss)."""
        weights = self.config.weights
        if weights == "uniform":
            return [1.0] * len(active)
        if weights == "depth":
            return [float(e) for e in active]
        return [float(weights[self.exits.index(e)]) for e in active]
