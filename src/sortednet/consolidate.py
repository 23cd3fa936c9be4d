"""`python -m sortednet.consolidate ckpt=PATH out=DIR [dtype=float32|bfloat16|float16]`: a training checkpoint
as one Hugging Face model directory, on CPU.

``ckpt`` is either a single-file ``.ckpt`` of ``sortednet.train`` (``strategy=single|ddp``, or ``fsdp`` with
``strategy.save_distributed_checkpoint=false``) or a distributed checkpoint directory of ``strategy=fsdp``
(one ``.distcp`` shard per rank, ``.metadata``, and Lightning's ``meta.pt``); the shards are read and
stitched in this one process, with no process group and no GPU, whatever the world size that wrote them.

DIR gets the whole sorted model (all L layers, the shared norm and LM head) in safetensors, the tokenizer,
the prompt template as ``prompt_style.json`` and a ``sortednet`` entry in ``config.json``: ``exit`` (= L),
``num_layers``, ``exits``, ``exit_heads``, ``objective``, ``prompt_style``, ``model``, ``tokenizer``,
``global_step``, ``source`` and ``consolidated: true``. ``AutoModelForCausalLM.from_pretrained(DIR)`` loads
it with no sortednet code, and so does ``sortednet.inference.load.load_sorted`` (every exit of the set, read
through the shared head). ICT exit heads (their own matrices) are written beside it as
``exit_heads.safetensors`` (keys ``<exit>.weight``, as in ``SortedLM.exit_heads``) and named in the entry's
``exit_heads_file``; ``from_pretrained`` ignores that file, and ``load_sorted`` does not read it yet, so from
a consolidated ICT model it serves the full model (exit L) only — use the ``.ckpt`` (or ``sortednet.export``
for a given exit) to decode with the ICT heads.

DIR is built in a temporary sibling and renamed into place; an existing non-empty DIR is refused.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file

from sortednet import cli
from sortednet.checkpoint import read_sorted_checkpoint
from sortednet.data.prompts import template_record
from sortednet.errors import SortedNetError
from sortednet.hub import DTYPES, load_tokenizer
from sortednet.inference.load import PROMPT_STYLE_FILE, build_model, prompt_style_of
from sortednet.io import check_new_dir, write_dir_atomically

EXIT_HEADS_FILE = "exit_heads.safetensors"


@dataclass
class ConsolidateConfig:
    ckpt: str = ""
    """A .ckpt file or a distributed checkpoint directory written by sortednet.train."""
    out: str = ""
    """The directory to create (absent or empty)."""
    dtype: str | None = None
    """The weights' dtype in out: float32 | bfloat16 | float16; null keeps the checkpoint's."""
    cache_dir: str | None = None
    """Where the embedded assets and hub downloads live (default: $SORTEDNET_CACHE or ~/.cache/sortednet)."""


def consolidate(cfg: ConsolidateConfig) -> Path:
    """Write ``cfg.ckpt`` as a Hugging Face model directory ``cfg.out``; returns the directory."""
    if not cfg.ckpt:
        raise SortedNetError("no checkpoint given; pass ckpt=PATH (a .ckpt or a distributed checkpoint directory)")
    if not cfg.out:
        raise SortedNetError("no output directory given; pass out=DIR (a new or empty directory)")
    if cfg.dtype is not None and cfg.dtype not in DTYPES:
        raise SortedNetError(f"unknown dtype {cfg.dtype!r}; use one of {', '.join(DTYPES)}")
    out = Path(cfg.out).expanduser().absolute()
    check_new_dir(out, "out")
    source = str(Path(cfg.ckpt).expanduser().absolute())
    state, meta = read_sorted_checkpoint(cfg.ckpt)
    lm, heads = build_model(state, meta, cfg.ckpt, DTYPES[cfg.dtype] if cfg.dtype else None, cfg.cache_dir)
    del state
    tokenizer = load_tokenizer(meta["tokenizer"], cfg.cache_dir)
    num_layers = meta["num_layers"]
    style = prompt_style_of(meta, tokenizer)
    lm.config.sortednet = {
        "source": source,
        "exit": num_layers,
        "num_layers": num_layers,
        "exits": [int(e) for e in meta["exits"]],
        "exit_heads": sorted(int(e) for e in meta.get("exit_heads") or []),
        "exit_heads_file": EXIT_HEADS_FILE if heads else None,
        "objective": meta.get("objective"),
        "prompt_style": meta.get("prompt_style", "alpaca"),
        "model": meta.get("model"),
        "tokenizer": meta["tokenizer"],
        "global_step": meta.get("global_step"),
        "consolidated": True,
    }

    def write(tmp: Path) -> None:
        lm.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        template = template_record(lm.config.sortednet["prompt_style"], style)
        (tmp / PROMPT_STYLE_FILE).write_text(json.dumps(template, indent=2) + "\n")
        if heads:
            save_file(heads, str(tmp / EXIT_HEADS_FILE), metadata={"format": "pt", "sortednet": "exit_heads"})
        if any(p.suffix in (".bin", ".pt", ".pth") for p in tmp.iterdir()):
            raise RuntimeError("save_pretrained wrote pickled weights; expected safetensors only")

    write_dir_atomically(out, write, if_exists="refuse")
    params = sum(p.numel() for p in lm.parameters())
    extra = f", ICT heads {sorted(int(e) for e in meta['exit_heads'])} in {EXIT_HEADS_FILE}" if heads else ""
    print(
        f"{source} ({meta.get('objective')}, {num_layers} layers, exits {list(meta['exits'])}, "
        f"{params / 1e6:.2f}M parameters, {lm.dtype}{extra}) -> {out}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    def run(cfg: ConsolidateConfig) -> None:
        cli.quiet_transformers()
        consolidate(cfg)

    return cli.run(run, ConsolidateConfig, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
