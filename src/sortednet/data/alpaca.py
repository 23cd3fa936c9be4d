"""Alpaca-format instruction data: tokenizing (cached), splitting and collating (rows are read and checked by
:mod:`sortednet.data.rows`; a TriviaQA source becomes rows in :mod:`sortednet.data.triviaqa`).

Tokenization follows the stanford_alpaca recipe exactly: the example is ``prompt + output + eos`` as
text, tokenized once; the first ``len(tokenize(prompt))`` labels are masked with -100. Truncation to
``max_length`` cuts the end of the response, so the prompt is always whole; a row whose prompt alone
fills ``max_length`` (no room for a single response token) is dropped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from sortednet.data.rows import check_rows
from sortednet.data.triviaqa import training_rows
from sortednet.errors import SortedNetError
from sortednet.hub import resolve
from sortednet.io import read_bytes, write_dir_atomically
from sortednet.loss import IGNORE_INDEX
from sortednet.prompts import get_prompt_style

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the tokenized columns change


def tokenize_rows(rows: list[dict], tokenizer, prompt_style: str, max_length: int, mask_prompt: bool) -> dict:
    """Columns ``input_ids``, ``labels``, ``prompt_len`` (+ the raw text columns) for the rows that fit."""
    style = get_prompt_style(prompt_style, tokenizer)
    prompts = [style.format(r["instruction"], r["input"]) for r in rows]
    end = style.end_of_response(tokenizer)
    examples = [p + r["output"] + end for p, r in zip(prompts, rows, strict=True)]
    prompt_ids = tokenizer(prompts)["input_ids"]
    example_ids = tokenizer(examples)["input_ids"]
    columns = {k: [] for k in ("input_ids", "labels", "prompt_len", "instruction", "input", "output")}
    too_long = 0
    for row, prompt, ids in zip(rows, prompt_ids, example_ids, strict=True):
        if len(prompt) >= max_length:
            too_long += 1
            continue
        ids = ids[:max_length]
        labels = list(ids)
        if mask_prompt:
            labels[: len(prompt)] = [IGNORE_INDEX] * len(prompt)
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
        columns["prompt_len"].append(len(prompt))
        for key in ("instruction", "input", "output"):
            columns[key].append(row[key])
    if too_long:
        log.warning(
            f"dropped {too_long} of {len(rows)} rows whose prompt alone reaches max_length={max_length} tokens; "
            f"raise data.max_length to keep them"
        )
    if not columns["input_ids"]:
        raise SortedNetError(f"every prompt is at least max_length={max_length} tokens long; raise data.max_length")
    return columns


def _fingerprint(path: str, tokenizer, **settings) -> str:
    digest = hashlib.sha256()
    file = Path(path).expanduser()
    digest.update(read_bytes(file, "data file") if file.is_file() else path.encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update((getattr(tokenizer, "chat_template", None) or "").encode())
    digest.update(json.dumps({**settings, "eos": tokenizer.eos_token, "format": CACHE_FORMAT}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def load_tokenized(
    path: str, tokenizer, prompt_style: str, max_length: int, mask_prompt: bool, cache_dir: str | os.PathLike
):
    """The tokenized data set as a ``datasets.Dataset``, built once per (file, tokenizer, settings)."""
    import datasets  # lazy: about 2 s to import, for the data set of a run only

    settings = dict(prompt_style=prompt_style, max_length=max_length, mask_prompt=mask_prompt)
    target = Path(cache_dir) / "tokenized" / _fingerprint(path, tokenizer, **settings)
    if not target.exists():
        rows = check_rows(training_rows(path), path)
        dataset = datasets.Dataset.from_dict(tokenize_rows(rows, tokenizer, **settings))
        write_dir_atomically(target, lambda tmp: dataset.save_to_disk(str(tmp)), if_exists="keep")
    return datasets.load_from_disk(str(target))


def tokenized_split(config, tokenizer, cache_dir: str | os.PathLike):
    """The tokenized data set of a :class:`~sortednet.config.DataConfig` and its seeded (train, validation)
    indices: what training uses, and what evaluation rebuilds to find the same validation rows."""
    path = resolve(config.path, "data.json", cache_dir)
    dataset = load_tokenized(path, tokenizer, config.prompt_style, config.max_length, config.mask_prompt, cache_dir)
    return (dataset, *split(len(dataset), config.val_size, config.seed, config.max_train_samples))


def split(n: int, val_size: int | float, seed: int, max_train: int | None = None) -> tuple[list[int], list[int]]:
    """A seeded (train, validation) split of ``range(n)``; ``val_size`` is a count or a fraction, and the
    train part keeps its first ``max_train`` rows of the seeded order (the validation part does not change)."""
    n_val = round(val_size * n) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise SortedNetError(f"data.val_size={val_size} leaves no train or no validation rows out of {n}")
    if max_train is not None and max_train < 1:
        raise SortedNetError(f"data.max_train_samples={max_train} must be at least 1; null trains on every row")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:][:max_train]), sorted(order[:n_val])


@dataclass
class Collator:
    """Right-pads ``input_ids`` with the pad (or, lacking one, EOS) id and ``labels`` with -100."""

    pad_id: int
    pad_to_multiple_of: int = 1

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(b["input_ids"]) for b in batch)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        out = {
            "input_ids": torch.full((len(batch), width), self.pad_id, dtype=torch.long),
            "labels": torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long),
            "attention_mask": torch.zeros((len(batch), width), dtype=torch.long),
        }
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            out["input_ids"][i, :n] = torch.tensor(b["input_ids"])
            out["labels"][i, :n] = torch.tensor(b["labels"])
            out["attention_mask"][i, :n] = 1
        return out


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
