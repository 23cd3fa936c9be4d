"""`python -m sortednet.calibrate ckpt=PATH [max_drop=0.01] [data=FILE] [prompts=60]`: dynamic-exit thresholds.

Decodes held-out instructions with the full model and with ``mode=dynamic`` at a grid of shared thresholds
(high to low), and prints the lowest threshold whose exact match is at most ``max_drop`` below the full
model's, with 1.0 (not tried) at every exit whose head costs more than its early exits save (all 1.0 when
none pays: dynamic decoding is then plain decoding). The table of every setting tried goes to stderr; stdout
carries only the chosen ``thresholds=[...]``, ready to pass to ``sortednet.generate mode=dynamic``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from sortednet import cli
from sortednet.data.rows import held_out_rows
from sortednet.errors import SortedNetError
from sortednet.inference.calibrate import calibrate
from sortednet.inference.load import load_sorted, prompt_style_of
from sortednet.prompts import encode_prompts
from sortednet.tables import markdown_table


@dataclass
class CalibrateConfig:
    ckpt: str = ""
    """A .ckpt written by sortednet.train, or a directory written by sortednet.export or sortednet.consolidate."""
    max_drop: float = 0.01
    """How far below the full model's exact match the chosen thresholds may fall, in [0, 1)."""
    data: str = "embedded"
    """Held-out rows: an Alpaca-format .json/.jsonl file (output = reference), or embedded (fresh rows of the
    embedded tasks, with a seed training did not use)."""
    prompts: int = 60
    """How many rows (the first ones of data) to decode."""
    max_new_tokens: int = 32
    """The most tokens generated per answer."""
    cache_dir: str | None = None
    """Where the embedded assets and hub downloads live (default: $SORTEDNET_CACHE or ~/.cache/sortednet)."""


def calibrate_cli(cfg: CalibrateConfig) -> None:
    cli.quiet_transformers()
    if not cfg.ckpt:
        raise SortedNetError("no checkpoint; pass ckpt=PATH.ckpt")
    if cfg.prompts < 1 or not 0 <= cfg.max_drop < 1:
        raise SortedNetError("prompts must be >= 1 and max_drop in [0, 1)")
    net, tokenizer, meta = load_sorted(cfg.ckpt, cfg.cache_dir)
    if len(meta.exits) < 2:
        raise SortedNetError(f"the checkpoint's exit set {meta.exits} has no exit below the last layer")
    rows = held_out_rows(cfg.data, cfg.prompts, seed=3)
    prompts = encode_prompts(tokenizer, prompt_style_of(meta, tokenizer), rows)
    thresholds, table = calibrate(
        net, tokenizer, prompts, [r["output"] for r in rows], meta.exits, cfg.max_drop, cfg.max_new_tokens
    )
    header = ("threshold", "exact_match", "(full)", "= full output", "mean exit", "exits tried")
    cells = [
        (
            row["threshold"],
            f"{row['exact_match']:.3f}",
            f"{row['full_exact_match']:.3f}",
            f"{row['agreement']:.3f}",
            f"{row['mean_exit']:.2f}",
            row["exits"],
        )
        for row in table
    ]
    print(markdown_table(header, cells), file=sys.stderr)
    print(f"thresholds=[{','.join(str(t) for t in thresholds)}]")


def main(argv: list[str] | None = None) -> int:
    return cli.run(calibrate_cli, CalibrateConfig, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
