"""`python -m sortednet.export ckpt=PATH exit=K out=DIR [dtype=float32|bfloat16]`: sub-model K as a plain
Hugging Face model; `python -m sortednet.export ckpt=PATH exit=K out=FILE.gguf [dtype=...|q8_0]`: sub-model K
as one GGUF file for llama.cpp; `exit=all out=DIR format=gguf`: one GGUF file per exit of the checkpoint;
`python -m sortednet.export ckpt=LORA.ckpt adapter=true out=DIR`: a LoRA run's adapters as a standard PEFT
adapter directory.

Writes DIR with the first K decoder layers, the final norm and the head exit K uses (its own ICT head if
it has one, untied from the embeddings), ``num_hidden_layers=K``, in safetensors only; the tokenizer; the
prompt template as ``prompt_style.json``; and a ``sortednet`` entry in ``config.json`` (source checkpoint,
exit, the source's layer count and exits, prompt style). ``AutoModelForCausalLM.from_pretrained(DIR)``
loads it with no sortednet code, and its logits are exit K's. DIR is built in a temporary sibling and
renamed into place; an existing non-empty DIR is never overwritten. A LoRA checkpoint's adapters are merged
into sub-model K.

With ``adapter=true`` (a LoRA checkpoint, no ``exit``) DIR gets PEFT's own ``adapter_config.json`` and
``adapter_model.safetensors``, with ``base_model_name_or_path`` the run's base model (the local directory for
``embedded``): ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), DIR)`` is exit L of the
run, with no sortednet code; so are vLLM's and the hub's LoRA loaders.

GGUF (``format=gguf``, or an ``out`` ending in ``.gguf``; the default for ``exit=all`` when the run's model came
in as a ``.gguf``): sub-model K written by :mod:`sortednet.inference.gguf_export` (LLaMA architecture,
``block_count=K``, the tokenizer with its chat template, float32 | float16 | bfloat16 | q8_0). The file is
written under a temporary name and renamed into place; an existing ``out`` is never overwritten. ``exit=all``
writes ``exit_K.gguf`` for every exit of the checkpoint into the new directory ``out``, with ``index.json``
(exit, layers, parameters, file size).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sortednet import cli
from sortednet.checkpoint import Metadata, read_training_checkpoint
from sortednet.errors import SortedNetError
from sortednet.hub import DTYPES, resolve
from sortednet.inference.gguf_export import GGUF_DTYPES, check_exportable, write_gguf
from sortednet.inference.hf_export import write_hf_model
from sortednet.inference.load import load_sorted, prompt_style_of
from sortednet.io import check_creatable_dir, check_new_dir, write_dir_atomically, write_file_atomically
from sortednet.lora import adapted_base


@dataclass
class ExportConfig:
    ckpt: str = ""
    """A .ckpt written by sortednet.train (or a directory written by this command)."""
    exit: Any = field(default=None, metadata={"type": "int | all"})
    """The layer count K of the sub-model, in [1, L]; all: every exit of the checkpoint (GGUF only)."""
    out: str = ""
    """The directory to create (absent or empty), or the .gguf file to create (absent)."""
    format: str = "auto"
    """hf | gguf | auto: gguf when out ends in .gguf, or for exit=all of a run whose model came in as a .gguf."""
    dtype: str = "float32"
    """The weights' dtype in out: float32 | bfloat16 | float16, and q8_0 for GGUF."""
    adapter: bool = False
    """true: write the adapters of a LoRA checkpoint as a PEFT adapter directory instead of a model."""
    cache_dir: str | None = None
    """Where the embedded assets and hub downloads live (default: $SORTEDNET_CACHE or ~/.cache/sortednet)."""


def check_exit(exit_: int | None, meta: Metadata, num_layers: int) -> None:
    """One-line error for a missing or out-of-range exit; a warning for one that was not trained."""
    if exit_ is None:
        raise SortedNetError(f"no exit given; pass exit=K with K in [1, {num_layers}] (trained exits: {meta.exits})")
    if not 1 <= exit_ <= num_layers:
        raise SortedNetError(
            f"exit={exit_} is outside [1, {num_layers}] (the checkpoint has {num_layers} layers; "
            f"trained exits: {meta.exits})"
        )
    origin = meta.exported_from
    if origin is not None and origin.exit_heads and exit_ not in meta.exits:
        raise SortedNetError(
            f"exit={exit_} of {meta.source!r} would read exit {meta.num_layers}'s own (ICT) head, not exit {exit_}'s; "
            f"export exit={exit_} from the training checkpoint {origin.source!r}"
        )
    if exit_ not in meta.exits:
        print(
            f"sortednet: warning: exit {exit_} is not one of the trained exits {meta.exits}; exporting it anyway",
            file=sys.stderr,
        )


def _tokenizer_gguf(meta: Metadata) -> str | None:
    """The GGUF file the checkpoint's tokenizer was read from, if it was read from one that is still there."""
    name = str(meta.tokenizer or "")
    return str(Path(name).expanduser()) if name.endswith(".gguf") and Path(name).expanduser().is_file() else None


def export_gguf(cfg: ExportConfig, out: Path, loaded: tuple | None = None) -> Path:
    """Write sub-model ``cfg.exit`` as the GGUF file ``out``, or (``exit=all``) every exit's file into the new
    directory ``out`` with an ``index.json``; returns ``out``."""
    if cfg.adapter:
        raise SortedNetError("adapter=true writes a PEFT adapter directory, not GGUF; drop format=gguf or adapter=true")
    if cfg.dtype not in GGUF_DTYPES:
        raise SortedNetError(f"unknown dtype {cfg.dtype!r} for a GGUF file; use one of {', '.join(GGUF_DTYPES)}")
    every = cfg.exit == "all"
    if every:
        check_new_dir(out, "out")
    else:
        if out.exists() or out.is_symlink():
            raise SortedNetError(f"out={str(out)!r} already exists; nothing was written: pick a new out= or remove it")
        check_creatable_dir(out.parent, "out")
    net, tokenizer, meta = loaded or load_sorted(cfg.ckpt, cfg.cache_dir)
    num_layers = net.num_layers
    exits = meta.exits if every else [cfg.exit]
    if not every:
        check_exit(cfg.exit, meta, num_layers)
    check_exportable(net.lm.config, cfg.dtype)  # before any file: an unsupported model or width writes nothing
    tokenizer_gguf = _tokenizer_gguf(meta)
    source = meta.export_record(num_layers).source
    stem = Path(source).stem

    def write_exit(exit_: int, target: Path) -> dict:
        sub = net.submodel(exit_)
        record = meta.export_record(exit_)
        provenance = {"exit": exit_, "num_layers": record.num_layers, "source": source}
        write_file_atomically(
            target,
            lambda tmp: write_gguf(
                sub, tokenizer, tmp, cfg.dtype, name=f"{stem}-exit{exit_}", tokenizer_gguf=tokenizer_gguf,
                sortednet=provenance,
            ),
        )  # fmt: skip
        record = {
            "exit": exit_,
            "layers": exit_,
            "parameters": sum(p.numel() for p in sub.parameters()),
            "dtype": cfg.dtype,
            "file": target.name,
            "bytes": target.stat().st_size,
        }
        print(
            f"exit {exit_} of {meta.source} ({exit_} of {num_layers} layers, {record['parameters'] / 1e6:.2f}M "
            f"parameters, {cfg.dtype}, {record['bytes'] / 2**20:.1f} MiB) -> {target}"
        )
        return record

    if not every:
        write_exit(cfg.exit, out)
        return out

    def write_all(tmp: Path) -> None:
        records = [write_exit(e, tmp / f"exit_{e}.gguf") for e in exits]
        index = {"source": source, "num_layers": num_layers, "dtype": cfg.dtype, "exits": records}
        (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")

    write_dir_atomically(out, write_all, if_exists="refuse")
    print(f"{len(exits)} GGUF files and index.json -> {out}")
    return out


def export(cfg: ExportConfig) -> Path:
    """Write sub-model ``cfg.exit`` of ``cfg.ckpt`` to ``cfg.out``; returns the directory."""
    # the value's type first, as the typed keys of every command are checked before anything else
    if cfg.exit is not None and cfg.exit != "all" and (isinstance(cfg.exit, bool) or not isinstance(cfg.exit, int)):
        raise SortedNetError(f"exit={cfg.exit!r} is not a valid int (a layer count) or all; give e.g. exit=4")
    if not cfg.ckpt:
        raise SortedNetError("no checkpoint given; pass ckpt=PATH.ckpt (written by sortednet.train)")
    if not cfg.out:
        raise SortedNetError("no output directory given; pass out=DIR (a new or empty directory)")
    if cfg.format not in ("auto", "hf", "gguf"):
        raise SortedNetError(f"unknown format {cfg.format!r}; use hf, gguf or auto")
    out = Path(cfg.out).expanduser().absolute()
    if cfg.format == "gguf" or (cfg.format == "auto" and out.suffix == ".gguf"):
        return export_gguf(cfg, out)
    if cfg.dtype not in DTYPES:
        hint = "; q8_0 is a GGUF type: pass out=FILE.gguf" if cfg.dtype in GGUF_DTYPES else ""
        raise SortedNetError(f"unknown dtype {cfg.dtype!r}; use one of {', '.join(DTYPES)}{hint}")
    check_new_dir(out, "out")
    if cfg.adapter:
        return export_adapter(cfg, out)
    net, tokenizer, meta = load_sorted(cfg.ckpt, cfg.cache_dir)
    num_layers = net.num_layers
    if cfg.exit == "all" and cfg.format == "auto" and str(meta.model or "").endswith(".gguf"):
        return export_gguf(cfg, out, (net, tokenizer, meta))  # came in as GGUF, goes back out as GGUF
    if cfg.exit == "all":
        raise SortedNetError("exit=all writes GGUF files; add format=gguf (or export one exit=K as a directory)")
    check_exit(cfg.exit, meta, num_layers)
    sub = net.submodel(cfg.exit, DTYPES[cfg.dtype])
    write_hf_model(out, sub, tokenizer, meta.export_record(cfg.exit), prompt_style_of(meta, tokenizer))
    params = sum(p.numel() for p in sub.parameters())
    print(
        f"exit {cfg.exit} of {meta.source} ({cfg.exit} of {num_layers} layers, {params / 1e6:.2f}M parameters, "
        f"{cfg.dtype}) -> {out}"
    )
    return out


def export_adapter(cfg: ExportConfig, out: Path) -> Path:
    """Write the adapters of LoRA checkpoint ``cfg.ckpt`` to ``out`` with PEFT's ``save_pretrained``."""
    if cfg.exit is not None:
        raise SortedNetError(
            "adapter=true writes the adapters of the whole model; drop exit= (exit=K without adapter=true exports "
            "sub-model K with the adapters merged)"
        )
    if cfg.dtype != "float32":
        raise SortedNetError("adapter=true writes the adapters as trained (float32); drop dtype=")
    path = Path(cfg.ckpt).expanduser()
    if not path.is_file():
        raise SortedNetError(f"adapter=true reads a LoRA .ckpt of sortednet.train; {cfg.ckpt!r} is not a file")
    state, meta = read_training_checkpoint(str(path))
    if not meta.lora:
        raise SortedNetError(
            f"{cfg.ckpt!r} is a full fine-tune, it has no adapters; export a model with exit=K instead of adapter=true"
        )
    adapters = {k[len("net.lm.") :]: v for k, v in state.items() if k.startswith("net.lm.")}
    peft_model = adapted_base(adapters, meta, str(path), cfg.cache_dir)
    # written into adapter_config.json: what from_pretrained(BASE) must load (embedded resolves to a directory)
    peft_model.peft_config["default"].base_model_name_or_path = resolve(meta.model, "model", cfg.cache_dir)
    write_dir_atomically(out, lambda tmp: peft_model.save_pretrained(tmp, safe_serialization=True), if_exists="refuse")
    count = sum(v.numel() for v in adapters.values())
    print(f"adapters of {path} ({len(adapters)} tensors, {count / 1e6:.3f}M parameters, base {meta.model}) -> {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    def run(cfg: ExportConfig) -> None:
        cli.quiet_transformers()
        export(cfg)

    return cli.run(run, ExportConfig, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
