"""`data.prompt_style=chat`: the tokenizer's chat template, token for token as `apply_chat_template` writes the
conversation; recorded in checkpoints so generate and export format prompts with the same template."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import chat_tokenizer, run_module, save_tiny, train_in_process
from sortednet import export, generate
from sortednet.data.alpaca import tokenize_rows
from sortednet.errors import SortedNetError
from sortednet.eval.exits import greedy_answers
from sortednet.inference.load import load_sorted, prompt_style_of
from sortednet.loss import IGNORE_INDEX
from sortednet.prompts import ChatStyle, get_prompt_style

ROWS = [
    {"instruction": "What color is the apple?", "input": "", "output": "The apple is red."},
    {"instruction": "Repeat the words exactly.", "input": "river stone", "output": "river stone"},
    {"instruction": "How many words are in the input?", "input": "tiger lemon piano", "output": " 3"},
]


def _user(row: dict) -> list[dict]:
    return [
        {"role": "user", "content": f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]}
    ]


def _template_ids(tokenizer, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, return_dict=False)


@pytest.mark.parametrize("adds_bos", [True, False], ids=["tokenizer-adds-bos", "template-only-bos"])
def test_rows_are_the_chat_template_token_for_token_with_the_prompt_masked(adds_bos):
    tokenizer = chat_tokenizer(adds_bos)
    assert (tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id) == adds_bos
    columns = tokenize_rows(ROWS, tokenizer, "chat", max_length=256, mask_prompt=True)
    assert len(columns["input_ids"]) == len(ROWS)
    for row, ids, labels, prompt_len in zip(
        ROWS, columns["input_ids"], columns["labels"], columns["prompt_len"], strict=True
    ):
        whole = _template_ids(tokenizer, [*_user(row), {"role": "assistant", "content": row["output"]}])
        # the whole conversation, up to and including the end of turn; the template's newline after it is not
        # trained on (nothing follows it at inference)
        assert ids == whole[: len(ids)] and tokenizer.decode(whole[len(ids) :]) == "\n"
        assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
        assert ids.count(tokenizer.bos_token_id) == 1  # written by the template, not doubled by the tokenizer
        prompt = _template_ids(tokenizer, _user(row), generation_prompt=True)
        assert prompt_len == len(prompt) and ids[:prompt_len] == prompt
        assert labels == [IGNORE_INDEX] * prompt_len + ids[prompt_len:]
        assert tokenizer.decode(ids[prompt_len:]) == row["output"] + "<|im_end|>"


def test_generation_prompt_is_what_training_masks(tokenizer):
    """generate/evaluate format a prompt with the same style object; its ids are the template's generation prompt."""
    chat = chat_tokenizer(adds_bos=True)
    style = get_prompt_style("chat", chat)
    assert isinstance(style, ChatStyle)
    for row in ROWS:
        ids = chat(style.format(row["instruction"], row["input"]))["input_ids"]
        assert ids == _template_ids(chat, _user(row), generation_prompt=True)


def test_a_tokenizer_without_a_chat_template_names_the_alpaca_style(tokenizer):
    assert not tokenizer.chat_template  # the embedded, LLaMA-like tokenizer
    with pytest.raises(SortedNetError) as error:
        tokenize_rows(ROWS, tokenizer, "chat", max_length=256, mask_prompt=True)
    message = str(error.value)
    assert "\n" not in message and "has none" in message and "chat template" in message
    assert "data.prompt_style=alpaca" in message


def test_a_template_whose_assistant_turn_does_not_follow_its_generation_prompt_is_refused():
    chat = chat_tokenizer(adds_bos=False)
    chat.chat_template = chat.chat_template.replace(
        "<|im_start|>assistant\n{% endif %}", "<|im_start|>bot\n{% endif %}"
    )
    with pytest.raises(SortedNetError, match=r"does not continue its generation prompt.*data\.prompt_style=alpaca"):
        tokenize_rows(ROWS, chat, "chat", max_length=256, mask_prompt=True)


def test_unknown_style_lists_chat():
    with pytest.raises(SortedNetError, match=r"unknown prompt style 'chatml'.*'chat'"):
        get_prompt_style("chatml")


# ---------------------------------------------------------------- a chat checkpoint end to end


def _train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_module("sortednet.train", f"hydra.run.dir={tmp_path / 'run'}", "logger=none", *overrides, cwd=tmp_path)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory, cache_dir) -> Path:
    """A 4-layer LLaMA trained 2 steps with data.prompt_style=chat and the ChatML tokenizer."""
    root = tmp_path_factory.mktemp("chat")
    tokenizer = chat_tokenizer(adds_bos=True)
    tokenizer.save_pretrained(root / "tokenizer")
    save_tiny("llama", root / "model", vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=3)
    data = root / "data.json"
    data.write_text(json.dumps(ROWS * 8))
    process = _train(
        root,
        f"model.name_or_path={root / 'model'}",
        f"model.tokenizer={root / 'tokenizer'}",
        f"data.path={data}",
        "data.prompt_style=chat",
        "data.val_size=4",
        "data.batch_size=4",
        "exits=[2,4]",
        "trainer.max_steps=2",
        "eval.num_generate=0",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return root / "run" / "checkpoints" / "last.ckpt"


def test_chat_checkpoint_generates_and_exports_with_the_template(chat_run, tmp_path, capsys):
    checkpoint = torch.load(chat_run, map_location="cpu", weights_only=True)
    assert checkpoint["sortednet"]["prompt_style"] == "chat"
    net, tokenizer, meta = load_sorted(str(chat_run))
    prompt = _template_ids(tokenizer, [{"role": "user", "content": ROWS[0]["instruction"]}], generation_prompt=True)
    (expected,) = greedy_answers(net, tokenizer, [prompt], 4, 6)
    args = [f"prompt={ROWS[0]['instruction']}", "max_new_tokens=6", "device=cpu"]
    assert generate.main([f"ckpt={chat_run}", *args]) == 0
    assert capsys.readouterr().out == expected + "\n"

    out = tmp_path / "export"
    assert export.main([f"ckpt={chat_run}", "exit=4", f"out={out}"]) == 0
    capsys.readouterr()
    assert json.loads((out / "prompt_style.json").read_text()) == {"name": "chat"}
    _, exported_tokenizer, exported_meta = load_sorted(str(out))
    assert exported_meta.prompt_style == "chat" and exported_meta.prompt_template is None
    assert isinstance(prompt_style_of(exported_meta, exported_tokenizer), ChatStyle)
    assert generate.main([f"ckpt={out}", *args]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_training_chat_with_a_tokenizer_without_template_is_one_line(tmp_path, cache_dir, capsys, monkeypatch):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(ROWS * 8))
    monkeypatch.chdir(tmp_path)
    overrides = [f"data.path={data}", "data.prompt_style=chat", "trainer.max_steps=1"]
    code, err = train_in_process([f"hydra.run.dir={tmp_path / 'run'}", "logger=none", *overrides], capsys)
    assert code != 0 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("sortednet: error:")]
    assert re.search(r"needs a tokenizer with a chat template.*has none; use data\.prompt_style=alpaca$", line), line
    assert not list((tmp_path / "run").rglob("*.ckpt"))
