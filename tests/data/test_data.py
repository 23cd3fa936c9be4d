"""The Alpaca data pipeline with the real embedded tokenizer: prompts, tokenization, files, cache, batches."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

from conftest import one_line
from sortednet.config import DataConfig
from sortednet.data.alpaca import (
    Collator,
    load_tokenized,
    pad_id,
    split,
    tokenize_rows,
)
from sortednet.data.rows import check_rows, read_rows
from sortednet.embedded import TASKS, make_rows, materialise
from sortednet.errors import SortedNetError
from sortednet.loss import IGNORE_INDEX
from sortednet.prompts import ALPACA, get_prompt_style
from sortednet.training.datamodule import AlpacaDataModule

# The `embedded_root` and `tokenizer` fixtures come from conftest.py: the embedded assets, written once per
# session, and their tokenizer (adds BOS, eos "</s>", no pad token).

LOGGER = "sortednet.data.alpaca"
ROWS_LOGGER = "sortednet.data.rows"  # check_rows' warnings

ROWS = [
    {"instruction": "Repeat the words exactly.", "input": "apple river", "output": "apple river"},
    {"instruction": "What is 12 plus 30?", "input": "", "output": "42"},
    {
        "instruction": "Translate to French.",
        "input": "line one\nline two",
        "output": "ligne un\nligne deux é ✓",
    },
    {"instruction": "Tell a story.", "input": "", "output": " ".join(["once upon a time"] * 20)},
]


def _recipe(rows: list[dict], tokenizer, max_length: int) -> list[tuple[list[int], list[int], int]]:
    """stanford_alpaca's preprocess(), written out independently: (input_ids, labels, source length)."""
    out = []
    for row in rows:
        template = ALPACA.with_input if row["input"] else ALPACA.without_input
        source = template.format(instruction=row["instruction"], input=row["input"])
        target = f"{row['output']}{tokenizer.eos_token}"
        input_ids = tokenizer(source + target, max_length=max_length, truncation=True).input_ids
        source_len = len(tokenizer(source, max_length=max_length, truncation=True).input_ids)
        labels = list(input_ids)
        labels[:source_len] = [-100] * source_len
        out.append((input_ids, labels, source_len))
    return out


def _write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# 1. Prompt templates ------------------------------------------------------------------------------


def test_alpaca_templates_character_for_character():
    assert ALPACA.format("Do X", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nDo X\n\n### Response:"
    )
    assert ALPACA.format("Do X") == ALPACA.format("Do X", "")
    assert ALPACA.format("Do X", "some input") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nDo X\n\n"
        "### Input:\nsome input\n\n### Response:"
    )
    assert get_prompt_style("alpaca") is ALPACA
    with pytest.raises(SortedNetError, match="unknown prompt style 'vicuna'") as error:
        get_prompt_style("vicuna")
    one_line(error)


# 2. Token-for-token equality with the stanford_alpaca recipe --------------------------------------


def test_tokenizer_fixture_is_llama_like(tokenizer):
    assert tokenizer.pad_token_id is None
    assert tokenizer.eos_token == "</s>"
    ids = tokenizer("apple").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] != tokenizer.eos_token_id


@pytest.mark.parametrize("max_length", [128, 320])
def test_tokenize_rows_matches_stanford_recipe(tokenizer, max_length):
    assert IGNORE_INDEX == -100
    columns = tokenize_rows(ROWS, tokenizer, "alpaca", max_length, mask_prompt=True)
    expected = _recipe(ROWS, tokenizer, max_length)
    assert len(columns["input_ids"]) == len(ROWS)  # every prompt fits: nothing dropped
    assert columns["input_ids"] == [e[0] for e in expected]
    assert columns["labels"] == [e[1] for e in expected]
    assert columns["prompt_len"] == [e[2] for e in expected]
    for key in ("instruction", "input", "output"):
        assert columns[key] == [r[key] for r in ROWS]
    for ids, labels, row in zip(columns["input_ids"], columns["labels"], ROWS, strict=True):
        assert ids[0] == tokenizer.bos_token_id
        assert len(ids) <= max_length
        if len(ids) < max_length:  # not truncated: ends with EOS, and EOS is trained on
            assert ids[-1] == labels[-1] == tokenizer.eos_token_id
            assert ids.count(tokenizer.eos_token_id) == 1
            # The trained tokens are exactly the response.
            assert tokenizer.decode([t for t in labels if t != -100], skip_special_tokens=True) == row["output"]
    # The long story is truncated at 128 but whole at 320; the short rows end in EOS either way.
    lengths = [len(ids) for ids in columns["input_ids"]]
    assert (lengths[3] == 128) == (max_length == 128)
    assert all(ids[-1] == tokenizer.eos_token_id for ids in columns["input_ids"][:3])


def test_tokenize_rows_unmasked_trains_on_everything(tokenizer):
    masked = tokenize_rows(ROWS, tokenizer, "alpaca", 128, mask_prompt=True)
    unmasked = tokenize_rows(ROWS, tokenizer, "alpaca", 128, mask_prompt=False)
    assert unmasked["labels"] == unmasked["input_ids"]
    assert unmasked["input_ids"] == masked["input_ids"]
    assert unmasked["prompt_len"] == masked["prompt_len"]
    assert all(-100 not in labels for labels in unmasked["labels"])


# 3. Truncation ------------------------------------------------------------------------------------


def test_truncation_keeps_prompt_and_start_of_response(tokenizer):
    row = {"instruction": "Count to ten.", "input": "", "output": "one two three four five six seven eight"}
    prompt_ids = tokenizer(ALPACA.format(row["instruction"])).input_ids
    response_ids = tokenizer(row["output"], add_special_tokens=False).input_ids
    prompt_len = len(prompt_ids)
    assert len(response_ids) > 3
    for room in (1, 3):
        max_length = prompt_len + room
        columns = tokenize_rows([row], tokenizer, "alpaca", max_length, mask_prompt=True)
        (ids,), (labels,) = columns["input_ids"], columns["labels"]
        assert columns["prompt_len"] == [prompt_len]
        assert len(ids) == len(labels) == max_length
        assert ids[:prompt_len] == prompt_ids
        assert labels[:prompt_len] == [-100] * prompt_len
        assert labels[prompt_len:] == ids[prompt_len:] == response_ids[:room]
        assert tokenizer.eos_token_id not in ids


def test_rows_whose_prompt_fills_max_length_are_dropped_with_warning(tokenizer, caplog):
    short = {"instruction": "Say hi.", "input": "", "output": "hi"}
    long = {"instruction": "Repeat the words exactly.", "input": " ".join(["apple"] * 40), "output": "apple"}
    long_prompt_len = len(tokenizer(ALPACA.format(long["instruction"], long["input"])).input_ids)
    short_prompt_len = len(tokenizer(ALPACA.format(short["instruction"])).input_ids)
    assert short_prompt_len + 2 < long_prompt_len
    # Exactly at the boundary: a prompt of max_length tokens leaves no room for the response.
    max_length = long_prompt_len
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        columns = tokenize_rows([long, short, long], tokenizer, "alpaca", max_length, mask_prompt=True)
    assert columns["output"] == ["hi"]
    assert columns["prompt_len"] == [short_prompt_len]
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 2 of 3 rows" in warnings[0].getMessage()
    assert f"max_length={max_length}" in warnings[0].getMessage()
    # One more token of room keeps the long row with a single response token.
    columns = tokenize_rows([long], tokenizer, "alpaca", max_length + 1, mask_prompt=True)
    assert [len(ids) for ids in columns["input_ids"]] == [max_length + 1]
    assert sum(t != -100 for t in columns["labels"][0]) == 1


def test_every_row_too_long_raises(tokenizer):
    with pytest.raises(SortedNetError) as error:
        tokenize_rows(ROWS, tokenizer, "alpaca", 10, mask_prompt=True)
    message = one_line(error)
    assert "data.max_length" in message and "max_length=10" in message


# 4. Bad files -------------------------------------------------------------------------------------

GOOD = {"instruction": "Say hi.", "input": "", "output": "hi"}

BAD_FILES = {
    "malformed_json": (
        "data.json",
        '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]\n',
        r"malformed JSON in .*data\.json at line 3, column \d+",
    ),
    "malformed_jsonl": (
        "data.jsonl",
        '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": \n{"instruction": "e", "output": "f"}\n',
        r"malformed JSON in .*data\.jsonl at line 3: ",
    ),
    "empty_json": ("data.json", "", r"is empty; pass a file with rows in it"),
    "object_not_list": ("data.json", json.dumps(GOOD), r"holds a JSON dict, expected a list of rows"),
    "row_not_object": (
        "data.jsonl",
        json.dumps(GOOD) + '\n["a", "b"]\n',
        r"row 1 of .* is a list, expected an object",
    ),
    "missing_instruction": (
        "data.json",
        json.dumps([GOOD, {"input": "", "output": "x"}]),
        r"row 1 of .* has no 'instruction' field",
    ),
    "missing_output": (
        "data.json",
        json.dumps([GOOD, GOOD, {"instruction": "x"}]),
        r"row 2 of .* no 'output' field",
    ),
    "int_input": (
        "data.json",
        json.dumps([{"instruction": "a", "input": 3, "output": "b"}]),
        r"row 0 of .*: 'input' is a int, not text",
    ),
    "list_output": (
        "data.jsonl",
        json.dumps({"instruction": "a", "output": ["b"]}) + "\n",
        r"row 0 of .*: 'output' is a list, not text",
    ),
    "empty_instruction": (
        "data.json",
        json.dumps([GOOD, {"instruction": " \n", "input": "", "output": "x"}]),
        r"row 1 of .* has an empty instruction",
    ),
    "all_outputs_empty": (
        "data.json",
        json.dumps([{"instruction": "a", "output": ""}, {"instruction": "b", "output": "  "}]),
        r"has no row with a non-empty output",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_raises_one_line_error_and_writes_nothing(tokenizer, tmp_path, name):
    filename, content, pattern = BAD_FILES[name]
    file = tmp_path / "in" / filename
    file.parent.mkdir()
    file.write_text(content, encoding="utf-8")
    # Directly through read_rows + check_rows ...
    with pytest.raises(SortedNetError) as error:
        check_rows(read_rows(str(file)), str(file))
    assert re.search(pattern, one_line(error)), str(error.value)
    # ... and through load_tokenized, which must leave nothing (no partial or temporary entry) in its cache.
    cache = tmp_path / "cache"
    with pytest.raises(SortedNetError) as error:
        load_tokenized(str(file), tokenizer, "alpaca", 64, True, cache)
    assert re.search(pattern, one_line(error)), str(error.value)
    assert not cache.exists() or [p for p in cache.rglob("*") if not p.is_dir()] == []
    assert not (cache / "tokenized").exists() or list((cache / "tokenized").iterdir()) == []


def test_null_instruction_raises_and_null_output_is_dropped(caplog):
    with pytest.raises(SortedNetError) as error:
        check_rows([GOOD, {"instruction": None, "output": "x"}], "data.json")
    assert "row 1" in one_line(error)
    with caplog.at_level(logging.WARNING):
        assert check_rows([GOOD, {"instruction": "a", "output": None}], "data.json") == [
            {"instruction": GOOD["instruction"], "input": GOOD.get("input") or "", "output": GOOD["output"]}
        ]
    assert "dropped 1 rows" in caplog.text


def test_null_or_missing_input_becomes_empty_string():
    rows = [
        {"instruction": "a", "output": "b"},
        {"instruction": "c", "input": None, "output": "d"},
        {"instruction": "e", "input": "f", "output": "g", "extra": 1},
    ]
    assert check_rows(rows, "s") == [
        {"instruction": "a", "input": "", "output": "b"},
        {"instruction": "c", "input": "", "output": "d"},
        {"instruction": "e", "input": "f", "output": "g"},
    ]


def test_empty_outputs_are_dropped_with_warning(caplog):
    rows = [
        GOOD,
        {"instruction": "a", "output": ""},
        {"instruction": "b", "output": " \n\t"},
        {**GOOD, "output": "yo"},
    ]
    with caplog.at_level(logging.WARNING, logger=ROWS_LOGGER):
        kept = check_rows(rows, "data.json")
    assert [r["output"] for r in kept] == ["hi", "yo"]
    warnings = [r.getMessage() for r in caplog.records if r.name == ROWS_LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 2 rows of data.json" in warnings[0] and "[1, 2]" in warnings[0]


@pytest.mark.parametrize("path", ["/nonexistent/x.json", "/nonexistent/x.jsonl", "./missing.json", "no_such.jsonl"])
def test_missing_file_says_not_found(tokenizer, tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SortedNetError) as error:
        read_rows(path)
    assert "not found" in one_line(error) and repr(path) in str(error.value)
    with pytest.raises(SortedNetError, match="not found") as error:
        load_tokenized(path, tokenizer, "alpaca", 64, True, tmp_path / "cache")
    one_line(error)
    tokenized = tmp_path / "cache" / "tokenized"
    assert not tokenized.exists() or list(tokenized.iterdir()) == []


def test_jsonl_and_json_give_the_same_rows(tmp_path):
    rows = ROWS + [{"instruction": "no input key", "output": "ok"}]
    from_json = read_rows(str(_write_json(tmp_path / "d.json", rows)))
    from_jsonl = read_rows(str(_write_jsonl(tmp_path / "d.jsonl", rows)))
    assert from_json == from_jsonl == rows
    assert check_rows(from_json, "a") == check_rows(from_jsonl, "b")


# 5. The tokenized cache ---------------------------------------------------------------------------


def test_cache_is_reused_and_keyed_by_settings(tokenizer, tmp_path):
    file = _write_json(tmp_path / "d.json", ROWS)
    cache = tmp_path / "cache"
    first = load_tokenized(str(file), tokenizer, "alpaca", 128, True, cache)
    entries = list((cache / "tokenized").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    stamp = {p: p.stat().st_mtime_ns for p in entries[0].rglob("*")}

    second = load_tokenized(str(file), tokenizer, "alpaca", 128, True, cache)
    assert second.to_dict() == first.to_dict()
    assert list((cache / "tokenized").iterdir()) == entries
    assert {p: p.stat().st_mtime_ns for p in entries[0].rglob("*")} == stamp  # read back, not rewritten

    expected = tokenize_rows(check_rows(ROWS, "x"), tokenizer, "alpaca", 128, True)
    assert first.to_dict() == expected

    other = load_tokenized(str(file), tokenizer, "alpaca", 320, True, cache)
    names = sorted(p.name for p in (cache / "tokenized").iterdir())
    assert len(names) == 2 and entries[0].name in names
    assert other["input_ids"] != first["input_ids"]  # the long story is whole at 320
    assert other.to_dict() == tokenize_rows(check_rows(ROWS, "x"), tokenizer, "alpaca", 320, True)

    unmasked = load_tokenized(str(file), tokenizer, "alpaca", 128, False, cache)
    assert len(list((cache / "tokenized").iterdir())) == 3
    assert unmasked["labels"] == unmasked["input_ids"]

    # Editing the file must not serve the stale tokenization.
    _write_json(file, ROWS[:2])
    edited = load_tokenized(str(file), tokenizer, "alpaca", 128, True, cache)
    assert edited["output"] == [r["output"] for r in ROWS[:2]]
    assert len(list((cache / "tokenized").iterdir())) == 4
    assert not any(p.name.startswith(".") for p in (cache / "tokenized").iterdir())


# 6. Collator --------------------------------------------------------------------------------------


def test_pad_id_falls_back_to_eos(tokenizer, embedded_root):
    from transformers import AutoTokenizer

    assert tokenizer.pad_token_id is None
    assert pad_id(tokenizer) == tokenizer.eos_token_id == 2
    with_pad = AutoTokenizer.from_pretrained(embedded_root / "tokenizer", pad_token="<unk>")
    assert pad_id(with_pad) == with_pad.unk_token_id == 0


def test_collator_right_pads(tokenizer):
    columns = tokenize_rows(ROWS[:3], tokenizer, "alpaca", 128, mask_prompt=True)
    batch = [{"input_ids": i, "labels": lab} for i, lab in zip(columns["input_ids"], columns["labels"], strict=True)]
    lengths = [len(b["input_ids"]) for b in batch]
    assert len(set(lengths)) == 3
    eos = tokenizer.eos_token_id

    out = Collator(pad_id(tokenizer))(batch)
    assert set(out) == {"input_ids", "labels", "attention_mask"}
    width = max(lengths)
    for key in out:
        assert out[key].shape == (3, width) and out[key].dtype == torch.long
    for i, (b, n) in enumerate(zip(batch, lengths, strict=True)):
        assert out["input_ids"][i].tolist() == b["input_ids"] + [eos] * (width - n)
        assert out["labels"][i].tolist() == b["labels"] + [-100] * (width - n)
        assert out["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)

    padded = Collator(pad_id(tokenizer), pad_to_multiple_of=8)(batch)
    width8 = -(-width // 8) * 8
    assert padded["input_ids"].shape == (3, width8)
    for i, n in enumerate(lengths):
        assert padded["attention_mask"][i].tolist() == [1] * n + [0] * (width8 - n)
        assert padded["labels"][i, n:].tolist() == [-100] * (width8 - n)
        assert padded["input_ids"][i, n:].tolist() == [eos] * (width8 - n)


@pytest.mark.parametrize(("longest", "width"), [(1, 8), (7, 8), (8, 8), (9, 16)])
def test_collator_pad_to_multiple_of(longest, width):
    batch = [{"input_ids": [5] * longest, "labels": [6] * longest}, {"input_ids": [7], "labels": [-100]}]
    out = Collator(pad_id=0, pad_to_multiple_of=8)(batch)
    assert out["input_ids"].shape == out["labels"].shape == out["attention_mask"].shape == (2, width)
    assert out["attention_mask"].sum(1).tolist() == [longest, 1]
    assert out["input_ids"][1].tolist() == [7] + [0] * (width - 1)


# 7. Split -----------------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_covering():
    train, val = split(40, 8, seed=3)
    torch.manual_seed(123)  # the global RNG must not matter
    assert split(40, 8, seed=3) == (train, val)
    assert len(val) == 8 and len(train) == 32
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(40))
    assert train == sorted(train) and val == sorted(val)
    assert split(40, 8, seed=4)[1] != val

    f_train, f_val = split(40, 0.25, seed=3)
    assert len(f_val) == 10 and sorted(f_train + f_val) == list(range(40))
    assert len(split(40, 0.05, seed=0)[1]) == 2
    assert len(split(10, 9, seed=0)[1]) == 9


def test_max_train_samples_keeps_a_seeded_subset_and_the_same_validation_rows():
    train, val = split(40, 8, seed=3)
    few, same_val = split(40, 8, seed=3, max_train=5)
    assert same_val == val and len(few) == 5 and set(few) <= set(train) and few == sorted(few)
    assert split(40, 8, seed=3, max_train=100) == (train, val)  # more than there are: all of them
    with pytest.raises(SortedNetError, match="data.max_train_samples=0") as error:
        split(40, 8, seed=3, max_train=0)
    one_line(error)


@pytest.mark.parametrize("val_size", [0, 0.0, 0.001, 40, 41, -1])
def test_split_that_leaves_nothing_raises(val_size):
    with pytest.raises(SortedNetError, match="data.val_size") as error:
        split(40, val_size, seed=0)
    one_line(error)


# 8. The data module end to end --------------------------------------------------------------------


def test_datamodule_end_to_end(tokenizer, tmp_path):
    rows = [
        {"instruction": f"What is {i} plus 1?", "input": "" if i % 2 else "apple river", "output": str(i + 1)}
        for i in range(40)
    ]
    file = _write_json(tmp_path / "numbers.json", rows)
    cache = tmp_path / "cache"
    config = DataConfig(path=str(file), max_length=64, val_size=8, batch_size=4, eval_batch_size=5)
    dm = AlpacaDataModule(config, tokenizer, cache_dir=str(cache))
    dm.prepare_data()
    dm.setup("fit")
    assert len(list((cache / "tokenized").iterdir())) == 1
    assert len(dm.train_set) == 32 and len(dm.val_set) == 8

    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    width = batch["input_ids"].shape[1]
    for key in batch:
        assert batch[key].shape == (4, width)
    assert width == batch["attention_mask"].sum(1).max().item() <= 64
    assert (batch["input_ids"][:, 0] == tokenizer.bos_token_id).all()
    real = batch["attention_mask"].bool()
    assert (batch["labels"][~real] == -100).all()
    assert (batch["input_ids"][~real] == tokenizer.eos_token_id).all()
    for labels, mask in zip(batch["labels"], batch["attention_mask"], strict=True):
        trained = labels[labels != -100].tolist()
        assert trained and trained[-1] == tokenizer.eos_token_id  # digits then EOS
        assert labels[mask.sum() - 1].item() == tokenizer.eos_token_id

    assert len(dm.val_rows) == 8
    val_outputs = dm.val_rows["output"]
    assert all(isinstance(o, str) and o for o in val_outputs)
    assert set(val_outputs) <= {r["output"] for r in rows}
    train_outputs = {
        tokenizer.decode([t for t in lab if t != -100], skip_special_tokens=True) for lab in dm.train_set["labels"]
    }
    assert train_outputs.isdisjoint(val_outputs) and len(train_outputs | set(val_outputs)) == 40

    val_batch = next(iter(dm.val_dataloader()))
    assert val_batch["input_ids"].shape[0] == 5
    # The same seed gives the same split.
    dm2 = AlpacaDataModule(config, tokenizer, cache_dir=str(cache))
    dm2.setup("fit")
    assert dm2.val_rows["output"] == val_outputs
    assert len(list((cache / "tokenized").iterdir())) == 1


# 9. The embedded data set -------------------------------------------------------------------------


def _family(row: dict) -> str:
    instruction = row["instruction"]
    if instruction.startswith("What color is the "):
        return "recall"
    if instruction == "Repeat the words exactly.":
        return "copy"
    if instruction == "How many words are in the input?":
        return "count"
    if instruction == "Write the words in reverse order.":
        return "reverse"
    if re.fullmatch(r"What is \d+ plus \d+\?", instruction):
        return "add"
    raise AssertionError(f"row of no known family: {row}")


def test_make_rows_deterministic_and_covers_all_families():
    rows = make_rows()
    assert rows == make_rows()
    assert make_rows(50, seed=1) == make_rows(50, seed=1) != make_rows(50, seed=2)
    assert len(rows) == 6000
    families = list(TASKS)
    assert set(families) == {"recall", "copy", "count", "reverse", "add"}
    assert [_family(r) for r in rows[:10]] == families * 2
    assert {_family(r) for r in rows} == set(families)
    for row in rows[:500]:
        family = _family(row)
        words = row["input"].split()
        if family == "copy":
            assert row["output"] == row["input"]
        elif family == "count":
            assert row["output"] == str(len(words))
        elif family == "reverse":
            assert row["output"].split() == words[::-1]
        elif family == "add":
            a, b = map(int, re.findall(r"\d+", row["instruction"]))
            assert row["output"] == str(a + b)
        else:
            assert row["input"] == "" and row["output"].startswith("The ")
    check_rows(rows, "embedded")  # well-formed


def test_materialise_twice_does_not_rewrite(embedded_root):
    data = embedded_root / "data.json"
    stamp = data.stat().st_mtime_ns
    assert materialise(embedded_root.parent) == embedded_root
    assert data.stat().st_mtime_ns == stamp
    assert json.loads(data.read_text()) == make_rows()
    assert sorted(p.name for p in embedded_root.parent.iterdir() if p.name.startswith(".embedded")) == []
