"""The one Hugging Face directory writer: a causal LM (a sub-model, or the whole sorted model) with its tokenizer,
prompt template and :class:`~sortednet.checkpoint.ExportRecord`, as ``sortednet.export`` and
``sortednet.consolidate`` write it and :func:`sortednet.inference.load.load_sorted` reads it.

``AutoModelForCausalLM.from_pretrained(DIR)`` loads the result with no sortednet code. The directory is built in
a temporary sibling and renamed into place; an existing non-empty one is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sortednet.checkpoint import EXIT_HEADS_FILE, PROMPT_STYLE_FILE, RECORD_KEY, ExportRecord
from sortednet.io import write_dir_atomically
from sortednet.prompts import ChatStyle, PromptStyle, template_record


def write_hf_model(
    out: Path,
    lm: torch.nn.Module,
    tokenizer,
    record: ExportRecord,
    style: PromptStyle | ChatStyle,
    exit_heads: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write ``lm`` (safetensors only), ``tokenizer``, the prompt template and ``record`` (``config.json``'s
    ``sortednet`` entry) into the new directory ``out``; ``exit_heads`` (keys ``<exit>.weight``) go beside them
    in :data:`~sortednet.checkpoint.EXIT_HEADS_FILE`, named in the record."""
    setattr(lm.config, RECORD_KEY, record.to_record())

    def write(tmp: Path) -> None:
        lm.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        template = template_record(record.prompt_style, style)
        (tmp / PROMPT_STYLE_FILE).write_text(json.dumps(template, indent=2) + "\n")
        if exit_heads:
            save_file(exit_heads, str(tmp / EXIT_HEADS_FILE), metadata={"format": "pt", "sortednet": "exit_heads"})
        pickled = sorted(p.name for p in tmp.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        if pickled:
            raise RuntimeError(f"save_pretrained wrote pickled weights {pickled}; expected safetensors only")
        if not any(p.suffix == ".safetensors" for p in tmp.iterdir()):
            raise RuntimeError("save_pretrained wrote no .safetensors file")

    write_dir_atomically(out, write, if_exists="refuse")
