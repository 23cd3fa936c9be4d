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
it with no sortednet code, and so does ``sortednet.inference.load.load_sorted`` (every exit of the set). ICT
exit heads (their own matrices) are written beside it as ``exit_heads.safetensors`` (keys ``<exit>.weight``, as
in ``SortedLM.exit_heads``) and named in the entry's ``exit_heads_file``; ``from_pretrained`` ignores that
file, ``load_sorted`` reads it, so every exit decodes with its own head.

The checkpoint is read by the one loader (``load_sorted``) and written by the one Hugging Face writer
(:mod:`sortednet.inference.hf_export`), as ``sortednet.export`` does for a sub-model. DIR is built in a
temporary sibling and renamed into place; an existing non-empty DIR is refused.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from sortednet import cli
from sortednet.checkpoint import EXIT_HEADS_FILE, read_metadata
from sortednet.errors import SortedNetError
from sortednet.hub import resolve_dtype
from sortednet.inference.hf_export import write_hf_model
from sortednet.inference.load import load_sorted, prompt_style_of
from sortednet.io import check_new_dir


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
    dtype = resolve_dtype(cfg.dtype) if cfg.dtype is not None else None
    out = Path(cfg.out).expanduser().absolute()
    check_new_dir(out, "out")
    if Path(cfg.ckpt).expanduser().is_dir():  # an exported directory is a Hugging Face model already
        read_metadata(cfg.ckpt, exported=False)
    net, tokenizer, meta = load_sorted(cfg.ckpt, cfg.cache_dir, dtype=dtype)
    heads = {k: v.contiguous() for k, v in net.exit_heads.state_dict().items()} if net.exit_heads else None
    record = meta.export_record(
        net.num_layers, exit_heads_file=EXIT_HEADS_FILE if heads else None, consolidated=True
    )  # fmt: skip
    write_hf_model(out, net.lm, tokenizer, record, prompt_style_of(meta, tokenizer), heads)
    params = sum(p.numel() for p in net.lm.parameters())
    extra = f", ICT heads {meta.exit_heads} in {EXIT_HEADS_FILE}" if heads else ""
    print(
        f"{record.source} ({meta.objective}, {meta.num_layers} layers, exits {meta.exits}, "
        f"{params / 1e6:.2f}M parameters, {net.lm.dtype}{extra}) -> {out}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    def run(cfg: ConsolidateConfig) -> None:
        cli.quiet_transformers()
        consolidate(cfg)

    return cli.run(run, ConsolidateConfig, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
