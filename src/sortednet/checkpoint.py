"""The checkpoint contract: the record every sortednet checkpoint carries, and the one place that reads it.

Three kinds of checkpoint carry the same record:

- a ``.ckpt`` file of ``sortednet.train`` (single, ddp, fsdp gathered): Lightning's dict, with the weights under
  ``state_dict`` and a :class:`Metadata` record under ``sortednet``;
- a distributed checkpoint directory of ``strategy=fsdp``: the shards (``torch.distributed.checkpoint``), with
  Lightning's non-tensor part, the record included, in ``meta.pt``;
- a Hugging Face model directory written by ``sortednet.export`` or ``sortednet.consolidate``: ``config.json``
  holds an :class:`ExportRecord` under ``sortednet``, the prompt template lies beside it in ``prompt_style.json``
  and a consolidated ICT model's own exit heads in ``exit_heads.safetensors``.

:class:`Metadata` is written by the LightningModule (``Metadata.to_record``) and read back here
(:func:`read_metadata`, any kind, no weights read); :class:`ExportRecord` is written by the Hugging Face writer
(:mod:`sortednet.inference.hf_export`) and the GGUF writer. :func:`read_training_checkpoint` reads a training
checkpoint's weights as one full state dict. Building a model from them is :func:`sortednet.inference.load.load_sorted`,
the one loader. Everything here loads on the CPU with ``weights_only=True`` (no arbitrary unpickling) and
memory-maps single files, so a caller that needs only part of a checkpoint does not hold all of it.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from sortednet.errors import SortedNetError

META_FILE = "meta.pt"  # Lightning's non-tensor part of a distributed checkpoint
MODEL_KEY = "state_dict"
RECORD_KEY = "sortednet"  # the record's key in a checkpoint and in an exported config.json
PROMPT_STYLE_FILE = "prompt_style.json"  # an exported directory's prompt template
EXIT_HEADS_FILE = "exit_heads.safetensors"  # a consolidated ICT model's own exit heads, keys ``<exit>.weight``
DEFAULT_PROMPT_STYLE = "alpaca"


@dataclass(frozen=True)
class ExportRecord:
    """The ``sortednet`` entry of an exported model's ``config.json`` (and, in part, a GGUF file's keys): which
    sub-model of which training checkpoint it is."""

    source: str
    """The training checkpoint it was cut from (absolute path); exporting an export keeps the first source."""
    exit: int
    """Its own layer count: sub-model ``exit`` of the source."""
    num_layers: int
    """The source's layer count."""
    exits: list[int]
    """The source's exits."""
    exit_heads: list[int]
    """The source's exits with their own (ICT) head."""
    objective: str | None
    prompt_style: str = DEFAULT_PROMPT_STYLE
    model: str | None = None
    tokenizer: str | None = None
    global_step: int | None = None
    precision: str | None = None
    exit_heads_file: str | None = None
    """A consolidated ICT model's own heads, beside the weights (:data:`EXIT_HEADS_FILE`)."""
    consolidated: bool = False
    """The whole model of the source (``sortednet.consolidate``), every exit readable through its head."""

    @classmethod
    def from_record(cls, record: dict, source: str) -> ExportRecord:
        try:
            return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})
        except TypeError as error:
            raise SortedNetError(f"{source!r}: its sortednet entry is incomplete ({error}); re-export it") from None

    def to_record(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Metadata:
    """What a checkpoint says about itself, so that it is used without its training config: written into every
    training checkpoint by the LightningModule, read by every loader."""

    objective: str | None
    """soft | sft | ict | extracted."""
    exits: list[int]
    num_layers: int
    hf_config: dict
    """The model's Hugging Face config, to rebuild it."""
    tokenizer: str
    model: str | None = None
    """Where the base model came from (hub id, directory, .gguf file, ``embedded``)."""
    prompt_style: str = DEFAULT_PROMPT_STYLE
    precision: str | None = None
    """``trainer.precision`` of the run (absent from checkpoints older than the field)."""
    exit_heads: list[int] = field(default_factory=list)
    """Exits with their own (ICT) head."""
    lora: dict | None = None
    quantization: str | None = None
    # Known when read, never written into a training checkpoint's record:
    global_step: int | None = None
    source: str | None = None
    """The path it was read from."""
    prompt_template: dict | None = None
    """An exported directory's own template strings (``with_input``, ``without_input``)."""
    exported_from: ExportRecord | None = None
    """An exported directory's record."""

    REQUIRED = ("exits", "num_layers", "hf_config", "tokenizer")
    WHEN_READ = ("global_step", "source", "prompt_template", "exported_from")

    def to_record(self) -> dict:
        """The dict stored under ``sortednet`` in a training checkpoint (plain types only: weights-only loading)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.WHEN_READ}

    @classmethod
    def from_record(cls, record: dict, source: str, global_step: int | None = None) -> Metadata:
        """The record of a training checkpoint; a one-line error naming what is missing."""
        missing = [key for key in cls.REQUIRED if key not in record]
        if missing:
            raise SortedNetError(f"{source!r} has incomplete sortednet metadata (no {', '.join(missing)})")
        known = {f.name for f in dataclasses.fields(cls)} - set(cls.WHEN_READ)
        values = {k: v for k, v in record.items() if k in known and v is not None}
        values["objective"] = record.get("objective")
        values["exits"] = [int(e) for e in record["exits"]]
        values["exit_heads"] = sorted(int(e) for e in record.get("exit_heads") or [])
        return cls(**values, global_step=global_step, source=source)

    def export_record(self, exit_: int, **extra) -> ExportRecord:
        """The record of sub-model ``exit_`` of this checkpoint; of an exported one, its first source's."""
        if self.exported_from is not None:
            return dataclasses.replace(
                self.exported_from, exit=exit_, exit_heads_file=None, consolidated=False, **extra
            )  # fmt: skip
        return ExportRecord(
            source=str(Path(self.source or "").absolute()),
            exit=exit_,
            num_layers=self.num_layers,
            exits=list(self.exits),
            exit_heads=list(self.exit_heads),
            objective=self.objective,
            prompt_style=self.prompt_style,
            model=self.model,
            tokenizer=self.tokenizer,
            global_step=self.global_step,
            precision=self.precision,
            **extra,
        )


# ---------------------------------------------------------------- reading


def _load_file(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError as error:
        raise SortedNetError(f"checkpoint {str(path)!r} not found") from error
    except Exception as error:
        raise SortedNetError(
            f"{str(path)!r} is not a readable checkpoint ({type(error).__name__}); pass a .ckpt written by "
            f"sortednet.train"
        ) from error


def _record_of(checkpoint, given: str) -> Metadata:
    if not isinstance(checkpoint, dict) or RECORD_KEY not in checkpoint:
        raise SortedNetError(f"{given!r} has no sortednet metadata; pass a checkpoint written by sortednet.train")
    return Metadata.from_record(checkpoint[RECORD_KEY], given, checkpoint.get("global_step"))


def read_checkpoint(path: str) -> tuple[dict, Metadata]:
    """A Lightning checkpoint file written by sortednet (memory-mapped) and its record, or a one-line error."""
    checkpoint = _load_file(Path(path).expanduser())
    meta = _record_of(checkpoint, path)
    if MODEL_KEY not in checkpoint:
        raise SortedNetError(f"{path!r} has no weights ({MODEL_KEY}); pass a checkpoint written by sortednet.train")
    return checkpoint, meta


def _kind(path: Path, given: str) -> str:
    """``file``, ``distributed`` or ``exported``; a one-line error for anything else."""
    if path.is_file():
        return "file"
    if not path.is_dir():
        raise SortedNetError(
            f"checkpoint {given!r} not found; pass a .ckpt file or a checkpoint directory of sortednet.train, "
            f"or a directory written by sortednet.export"
        )
    if (path / META_FILE).is_file() and (path / ".metadata").is_file():
        return "distributed"
    if (path / "config.json").is_file():
        return "exported"
    raise SortedNetError(
        f"{given!r} is a directory, not a distributed checkpoint of sortednet.train (no {META_FILE} and .metadata) "
        f"nor a model directory of sortednet.export (no config.json); pass a .ckpt or a checkpoint directory"
    )


def read_metadata(ckpt: str, exported: bool = True) -> Metadata:
    """The record of any kind of checkpoint, weights unread; ``exported=False`` refuses an exported directory
    (resuming and ICT need a training checkpoint)."""
    path = Path(ckpt).expanduser()
    kind = _kind(path, ckpt)
    if kind == "file":
        return read_checkpoint(ckpt)[1]
    if kind == "distributed":
        return _record_of(_load_file(path / META_FILE), ckpt)
    if not exported:
        raise SortedNetError(
            f"{ckpt!r} is a Hugging Face model directory (of sortednet.export, or any), not a training checkpoint; "
            f"pass a .ckpt or a checkpoint directory written by sortednet.train"
        )
    return _exported_metadata(path, ckpt)


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SortedNetError(f"{str(path)!r} is not readable JSON ({type(error).__name__}); re-export {what}") from None


def _exported_metadata(path: Path, given: str) -> Metadata:
    """An exported directory's record as a :class:`Metadata` of the model in it. Its exits: every exit of the
    source up to its own layer count K when it reads the shared head; a consolidated ICT model's exits keep
    their own heads (in :data:`EXIT_HEADS_FILE`); a sub-model of an ICT source serves exit K only (exits below
    it would read K's head, not their own)."""
    config = _read_json(path / "config.json", "the model")
    entry = config.get(RECORD_KEY) if isinstance(config, dict) else None
    if not isinstance(entry, dict) or "exit" not in entry:
        raise SortedNetError(
            f"{given!r} is a Hugging Face model directory without a sortednet entry in config.json; pass a .ckpt "
            f"written by sortednet.train or a directory written by sortednet.export"
        )
    record = ExportRecord.from_record(entry, given)
    k = int(config.get("num_hidden_layers") or record.exit)
    source_exits = [int(e) for e in record.exits or [k]]
    if record.exit_heads_file:
        heads, exits = sorted(int(e) for e in record.exit_heads), sorted(set(source_exits) | {k})
    else:
        heads = []
        exits = [k] if record.exit_heads else sorted({e for e in source_exits if e <= k} | {k})
    template = None
    template_file = path / PROMPT_STYLE_FILE
    if template_file.is_file() and record.prompt_style != "chat":  # a chat template travels in the tokenizer
        stored = _read_json(template_file, "the model")
        try:
            template = {key: stored[key] for key in ("with_input", "without_input")}
        except (KeyError, TypeError) as error:
            raise SortedNetError(
                f"{str(template_file)!r} is not a prompt template (with_input, without_input); re-export the model"
            ) from error
    return Metadata(
        objective=record.objective,
        exits=exits,
        num_layers=k,
        hf_config={key: value for key, value in config.items() if key != RECORD_KEY},
        tokenizer=str(path),
        model=str(path),
        prompt_style=record.prompt_style,
        precision=record.precision,
        exit_heads=heads,
        global_step=record.global_step,
        source=str(path),
        prompt_template=template,
        exported_from=record,
    )


def read_training_checkpoint(ckpt: str) -> tuple[dict[str, torch.Tensor], Metadata]:
    """``(state_dict, metadata)`` of a training checkpoint — a ``.ckpt`` file or a distributed checkpoint
    directory — on the CPU, full (unsharded) tensors; a one-line error for anything else."""
    path = Path(ckpt).expanduser()
    if path.is_file():
        checkpoint, meta = read_checkpoint(ckpt)
        return checkpoint[MODEL_KEY], meta
    meta = read_metadata(ckpt, exported=False)
    try:
        state = _read_distributed_model(path)
    except Exception as error:
        raise SortedNetError(
            f"cannot read the shards of {ckpt!r} ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        ) from error
    return state, meta


def _read_distributed_model(path: Path) -> dict[str, torch.Tensor]:
    """The model's full tensors from a distributed checkpoint, in this one process (no process group): only
    ``state_dict.*`` is read, never the optimizer states (2-3x the weights). The tensors are allocated from the
    checkpoint's own metadata and filled by ``torch.distributed.checkpoint.load``, which reassembles the shards."""
    reader = dcp.FileSystemReader(str(path))
    prefix = f"{MODEL_KEY}."
    state = {
        key[len(prefix) :]: torch.empty(item.size, dtype=item.properties.dtype)
        for key, item in reader.read_metadata().state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(item, dcp.TensorStorageMetadata)
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load({MODEL_KEY: state}, storage_reader=reader, no_dist=True)
    return state
