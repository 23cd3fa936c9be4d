"""TriviaQA: reading both row layouts, training rows through the DataModule, the metrics, per-exit evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import sortednet.data.triviaqa
from conftest import one_line, sorted_module
from sortednet.checkpoint import Metadata
from sortednet.config import DataConfig
from sortednet.data.alpaca import load_tokenized, tokenized_split
from sortednet.data.triviaqa import (
    is_triviaqa_hub_id,
    read_triviaqa,
    to_instruction_rows,
    training_rows,
)
from sortednet.errors import SortedNetError
from sortednet.eval.exits import greedy_answers
from sortednet.eval.triviaqa import (
    answer_line,
    evaluate_exits,
    exact_match_cased,
    exact_match_normalized,
    f1,
    normalize_answer,
    question_prompts,
    score_answers,
    write_predictions,
)
from sortednet.loss import IGNORE_INDEX
from sortednet.prompts import ALPACA, TRIVIAQA
from sortednet.training.datamodule import AlpacaDataModule


def _hf_row(i: int, question: str, value: str, aliases: list[str]) -> dict:
    """A row of Hugging Face's trivia_qa (rc.nocontext / unfiltered.nocontext), the fields it really has."""
    return {
        "question": question,
        "question_id": f"tc_{i}",
        "question_source": "http://www.example.org/",
        "entity_pages": {"doc_source": [], "filename": [], "title": [], "wiki_context": []},
        "search_results": {"description": [], "filename": [], "rank": [], "title": [], "url": [], "search_context": []},
        "answer": {
            "aliases": aliases,
            "normalized_aliases": [normalize_answer(a) for a in aliases],
            "matched_wiki_entity_name": "",
            "normalized_matched_wiki_entity_name": "",
            "normalized_value": normalize_answer(value),
            "type": "WikipediaEntity",
            "value": value,
        },
    }


HF_ROWS = [
    _hf_row(0, "Which city is the capital of France?", "Paris", ["Paris", "Paris, France", "Ville Lumière"]),
    _hf_row(1, "Who wrote Hamlet?", "William Shakespeare", ["Shakespeare", "The Bard"]),
    _hf_row(2, "What colour is a ripe banana?", "Yellow", ["Yellow", "yellow"]),
    _hf_row(3, "How many legs has a spider?", "8", ["Eight", "8"]),
    _hf_row(4, "Which planet is called the red planet?", "Mars", ["Mars", "Planet Mars"]),
    _hf_row(5, "Which river flows through Cairo?", "Nile", ["Nile", "River Nile", "The Nile"]),
]


def _write_to_json(path: Path, rows: list[dict]) -> Path:
    """What a user gets from ``datasets``: ``Dataset.to_json`` writes JSON Lines, whatever the suffix."""
    import datasets

    datasets.Dataset.from_list(rows).to_json(str(path))
    return path


# 1. Reading ----------------------------------------------------------------------------------------


def test_hf_layout_saved_by_datasets_is_read_with_value_first_then_aliases(tmp_path):
    records = read_triviaqa(str(_write_to_json(tmp_path / "tqa.json", HF_ROWS)))
    assert [r["question"] for r in records] == [r["question"] for r in HF_ROWS]
    assert records[0] == {
        "question": "Which city is the capital of France?",
        "answers": ["Paris", "Paris, France", "Ville Lumière"],
        "id": "tc_0",
    }
    assert records[1]["answers"] == ["William Shakespeare", "Shakespeare", "The Bard"]
    assert records[3]["answers"] == ["8", "Eight"]  # value first, duplicates dropped


def test_hf_layout_as_a_json_list_equals_json_lines(tmp_path):
    as_list = tmp_path / "tqa_list.json"
    as_list.write_text(json.dumps(HF_ROWS), encoding="utf-8")
    as_lines = tmp_path / "tqa.jsonl"
    as_lines.write_text("".join(json.dumps(r) + "\n" for r in HF_ROWS), encoding="utf-8")
    assert (
        read_triviaqa(str(as_list))
        == read_triviaqa(str(as_lines))
        == read_triviaqa(str(_write_to_json(tmp_path / "tqa.json", HF_ROWS)))
    )


def test_simple_layout_first_answer_is_the_target(tmp_path):
    file = tmp_path / "simple.jsonl"
    rows = [{"question": "2+2?", "answers": ["4", "four"]}, {"question": "Capital of Italy?", "answers": "Rome"}]
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    records = read_triviaqa(str(file))
    assert records == [
        {"question": "2+2?", "answers": ["4", "four"], "id": None},
        {"question": "Capital of Italy?", "answers": ["Rome"], "id": None},
    ]
    assert to_instruction_rows(records) == [
        {"instruction": "2+2?", "input": "", "output": " 4"},
        {"instruction": "Capital of Italy?", "input": "", "output": " Rome"},
    ]


BAD_ROWS = {
    "no_question": ({"answers": ["x"]}, r"row 1 of .*bad\.json has no 'question' field"),
    "empty_question": ({"question": "  ", "answers": ["x"]}, r"row 1 of .* has an empty or non-text 'question'"),
    "no_answer": ({"question": "q"}, r"row 1 of .* has no 'answer' or 'answers' field"),
    "answer_without_value": ({"question": "q", "answer": {"aliases": ["x"]}}, r"row 1 of .* no 'answer.value' field"),
    "empty_value": ({"question": "q", "answer": {"value": "", "aliases": []}}, r"row 1 of .*empty 'answer.value'.*"),
    "aliases_not_strings": (
        {"question": "q", "answer": {"value": "x", "aliases": [1]}},
        r"row 1 of .*: 'answer.aliases' is a list, expected a list of strings",
    ),
    "answers_not_list": ({"question": "q", "answers": 4}, r"row 1 of .*: 'answers' is a int, expected a list"),
    "answers_empty": ({"question": "q", "answers": []}, r"row 1 of .* has an empty 'answers' list"),
    "row_not_object": (["q", "a"], r"row 1 of .* is a list, expected an object"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_bad_rows_give_one_line_errors_naming_file_row_and_field(tmp_path, name):
    import re

    row, pattern = BAD_ROWS[name]
    file = tmp_path / "bad.json"
    file.write_text(json.dumps([{"question": "ok", "answers": ["fine"]}, row]), encoding="utf-8")
    with pytest.raises(SortedNetError) as error:
        read_triviaqa(str(file))
    assert re.search(pattern, one_line(error)), str(error.value)
    with pytest.raises(SortedNetError) as error:  # the training path reports the same
        training_rows(str(file))
    assert re.search(pattern, one_line(error)), str(error.value)


def test_a_bad_first_row_is_still_reported_as_triviaqa(tmp_path):
    file = tmp_path / "bad.jsonl"
    file.write_text(json.dumps({"answers": ["x"]}) + "\n", encoding="utf-8")
    with pytest.raises(SortedNetError) as error:
        training_rows(str(file))
    assert "row 0 of" in one_line(error) and "no 'question' field" in str(error.value)


def test_hub_ids_are_told_apart_from_files(tmp_path):
    assert is_triviaqa_hub_id("trivia_qa") and is_triviaqa_hub_id("mandarjoshi/trivia_qa")
    assert is_triviaqa_hub_id("someone/TriviaQA")
    for path in ("tatsu-lab/alpaca", "./trivia_qa", "/data/trivia_qa", "trivia_qa.jsonl", "a/b/trivia_qa"):
        assert not is_triviaqa_hub_id(path), path


def test_unreachable_hub_asks_for_a_local_file(monkeypatch, tokenizer, tmp_path):
    monkeypatch.setattr(sortednet.data.triviaqa, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(SortedNetError) as error:
        read_triviaqa("mandarjoshi/trivia_qa")
    message = one_line(error)
    assert "hub is unreachable" in message and "local file" in message and "unfiltered.nocontext" in message
    with pytest.raises(SortedNetError) as error:
        load_tokenized("mandarjoshi/trivia_qa", tokenizer, "triviaqa", 64, True, tmp_path / "cache")
    assert "hub is unreachable" in one_line(error)
    assert not list((tmp_path / "cache").rglob("*.arrow"))


def test_alpaca_rows_pass_through_unchanged(tmp_path):
    rows = [{"instruction": "Say hi.", "input": "", "output": "hi"}]
    file = tmp_path / "alpaca.json"
    file.write_text(json.dumps(rows), encoding="utf-8")
    assert training_rows(str(file)) == rows


# llm-foundry's layout, as /work/shared/data/triviaqa/triviaqa_sm_sub.jsonl holds it
FOUNDRY_ROWS = [
    {"context": "Question: What type of animal is a dik-dik?\nAnswer:", "answer": "Antelope",
     "aliases": ["Botswanan Antelopes", "Antelope", "Antelopes"]},
    {"context": "Question: Which 'Sutherland Brothers and \x85.'?\nAnswer:", "answer": "QUIVER",
     "aliases": ["QUIVER", "Quiver"]},
    {"context": "Question:  Answer: is in the question?\nAnswer: ", "answer": "Yes", "aliases": []},
]  # fmt: skip
REAL_TRIVIAQA = Path(__file__).parents[3] / "shared" / "data" / "triviaqa" / "triviaqa_sm_sub.jsonl"


def test_llm_foundry_layout_reads_question_from_the_context_and_answer_first(tmp_path):
    file = tmp_path / "foundry.jsonl"
    # written as Python's json writes it: U+0085 stays raw inside a string (a JSON Lines line ends at "\n" only)
    file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in FOUNDRY_ROWS), encoding="utf-8")
    records = read_triviaqa(str(file))
    assert records == [
        {"question": "What type of animal is a dik-dik?", "answers": ["Antelope", "Botswanan Antelopes", "Antelopes"],
         "id": None},
        {"question": "Which 'Sutherland Brothers and \x85.'?", "answers": ["QUIVER", "Quiver"], "id": None},
        {"question": "Answer: is in the question?", "answers": ["Yes"], "id": None},
    ]  # fmt: skip
    assert training_rows(str(file))[0] == {"instruction": "What type of animal is a dik-dik?", "input": "",
                                           "output": " Antelope"}  # fmt: skip


@pytest.mark.skipif(not REAL_TRIVIAQA.is_file(), reason="needs ../shared/data/triviaqa (the project's real data)")
def test_the_real_llm_foundry_file_is_read_as_it_is():
    rows = [json.loads(line) for line in REAL_TRIVIAQA.read_text(encoding="utf-8").split("\n") if line.strip()]
    records = read_triviaqa(str(REAL_TRIVIAQA))
    assert len(records) == len(rows) == 3000
    for row, record in zip(rows, records, strict=True):
        assert row["context"] == f"Question: {record['question']}\nAnswer:"
        assert record["answers"][0] == row["answer"] and set(record["answers"]) == {row["answer"], *row["aliases"]}
    training = training_rows(str(REAL_TRIVIAQA))
    assert training[0] == {
        "instruction": "Brunswick, Lancastrian and Pearl Pickler are types of which vegetable?",
        "input": "",
        "output": " Onion",
    }


UNKNOWN_LAYOUTS = {
    "prompt_completion": {"prompt": "Q?", "completion": "A"},
    "foundry_without_answer_line": {"context": "Question: Who?", "answer": "Me", "aliases": []},
    "foundry_without_answer": {"context": "Question: Who?\nAnswer:", "aliases": ["Me"]},
}


@pytest.mark.parametrize("name", list(UNKNOWN_LAYOUTS))
def test_a_file_in_an_unknown_layout_names_the_layouts_read(tmp_path, name):
    file = tmp_path / "unknown.jsonl"
    file.write_text(json.dumps(UNKNOWN_LAYOUTS[name]) + "\n", encoding="utf-8")
    for read in (read_triviaqa, training_rows):
        with pytest.raises(SortedNetError) as error:
            read(str(file))
        message = one_line(error)
        assert "row 0 of" in message and str(file) in message
        if name != "foundry_without_answer":
            assert "trivia_qa {question, answer: {value, aliases}}" in message and "llm-foundry {context" in message


# 2. Training rows through the DataModule -----------------------------------------------------------


def test_triviaqa_file_trains_question_to_answer_with_the_prompt_masked(tokenizer, tmp_path):
    file = _write_to_json(tmp_path / "train.json", HF_ROWS)
    config = DataConfig(path=str(file), prompt_style="triviaqa", max_length=64, val_size=2, batch_size=4)
    dm = AlpacaDataModule(config, tokenizer, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert len(dm.train_set) == 4 and len(dm.val_rows) == 2
    by_question = {r["question"]: r["answer"]["value"] for r in HF_ROWS}
    everything, _, _ = tokenized_split(config, tokenizer, str(tmp_path / "cache"))
    assert len(everything) == len(HF_ROWS)
    for row in everything:
        prompt = TRIVIAQA.format(row["instruction"])
        assert prompt == f"Question: {row['instruction']}\nAnswer:"
        n = row["prompt_len"]
        assert row["input_ids"][:n] == tokenizer(prompt)["input_ids"] and row["input_ids"][0] == tokenizer.bos_token_id
        assert row["labels"][:n] == [IGNORE_INDEX] * n
        assert row["labels"][n:] == row["input_ids"][n:]
        assert row["labels"][-1] == tokenizer.eos_token_id
        answer = by_question[row["instruction"]]
        assert row["output"] == " " + answer
        assert tokenizer.decode(row["labels"][n:]) == f" {answer}{tokenizer.eos_token}"

    batch = next(iter(dm.train_dataloader()))
    answers = set()
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        kept = labels[labels != IGNORE_INDEX]
        assert (kept == ids[labels != IGNORE_INDEX]).all()
        answers.add(tokenizer.decode(kept, skip_special_tokens=True).strip())
    assert answers <= set(by_question.values()) and len(answers) == 4


def test_data_triviaqa_composes_with_the_schema(tokenizer):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import sortednet.train  # noqa: F401  (registers the schema)

    conf = Path(__file__).parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = OmegaConf.to_object(compose("train", overrides=["run_dir=/tmp/unused", "data=triviaqa"]))
    assert cfg.data.prompt_style == "triviaqa" and cfg.data.path == "mandarjoshi/trivia_qa"
    assert is_triviaqa_hub_id(cfg.data.path)
    AlpacaDataModule(cfg.data, tokenizer, "/tmp/unused")


# 3. Metrics ----------------------------------------------------------------------------------------

CASED = [  # (prediction, aliases, expected)
    ("Paris", ["Paris"], True),
    ("  Paris \nQuestion: Who wrote Hamlet?", ["Paris"], True),
    ("\n\nParis", ["Paris"], True),
    ("paris", ["Paris"], False),
    ("Paris.", ["Paris"], False),
    ("The Beatles", ["Beatles", "The Beatles"], True),
    ("The Beatles", ["Beatles"], False),
    ("Paris", [" Paris "], True),
    ("", ["Paris"], False),
    ("Paris", [], False),
]


@pytest.mark.parametrize("prediction, aliases, expected", CASED)
def test_exact_match_cased(prediction, aliases, expected):
    assert exact_match_cased(prediction, aliases) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The  Beatles!", "beatles"),
        ("An apple a day", "apple day"),
        ("Rock 'n' Roll", "rock n roll"),
        ("U.S.A.", "usa"),
        ("theatre Anthem", "theatre anthem"),
        ("  A  ", ""),
        ("“Quoted” ‘text’", "quoted text"),
        ("Ville\tLumière", "ville lumière"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    "prediction, aliases, expected",
    [
        ("the beatles.", ["Beatles"], True),
        ("paris", ["Paris"], True),
        ("Paris, France", ["Paris"], False),
        ("Paris, France", ["Paris", "paris france"], True),
        ("Paris\nFrance", ["Paris France"], False),
        ("Rome", ["Paris"], False),
    ],
)
def test_exact_match_normalized(prediction, aliases, expected):
    assert exact_match_normalized(prediction, aliases) is expected


@pytest.mark.parametrize(
    "prediction, aliases, expected",
    [
        ("Paris", ["Paris"], 1.0),
        ("Paris France", ["Paris"], 2 / 3),  # precision 1/2, recall 1
        ("the red house", ["Red House Painters"], 0.8),  # precision 1, recall 2/3
        ("Red House", ["blue", "red house painters", "house"], 0.8),  # the best alias
        ("paris paris", ["Paris"], 2 / 3),  # a repeated token counts once against one
        ("Rome", ["Paris"], 0.0),
        ("", ["Paris"], 0.0),
        ("a", ["The"], 1.0),  # both normalize to nothing
        ("Paris", [], 0.0),
    ],
)
def test_f1(prediction, aliases, expected):
    assert f1(prediction, aliases) == pytest.approx(expected, abs=1e-12)


# (prediction, aliases) in plain ASCII, where our normalisation must equal SQuAD's official one; ours also
# drops typographic quotes (‘’´“”), which SQuAD keeps.
SQUAD_CASES = [
    ("Paris", ["Paris"]),
    ("the Beatles!", ["The Beatles", "Beatles"]),
    ("An  apple, a pear", ["apple pear"]),
    ("Jay-Z", ["Jay Z", "jayz"]),
    ("William Shakespeare", ["Shakespeare", "Bill Shakespeare"]),
    ("8 legs", ["8", "eight"]),
    ("the the cat", ["cat cat"]),
    ("...", ["a"]),
    ("", ["Paris"]),
    ("Theatre of the absurd", ["theatre absurd", "Absurd theatre"]),
    ("U.S.A.", ["USA", "U S A"]),
]


@pytest.mark.parametrize(("prediction", "aliases"), SQUAD_CASES)
def test_normalized_em_and_f1_equal_squad_official_scores_from_torchmetrics(prediction, aliases):
    from torchmetrics.functional.text import squad

    reference = squad(
        {"prediction_text": prediction, "id": "q"}, {"answers": {"text": aliases, "answer_start": [0]}, "id": "q"}
    )
    assert 100 * exact_match_normalized(prediction, aliases) == float(reference["exact_match"])
    assert 100 * f1(prediction, aliases) == pytest.approx(float(reference["f1"]), abs=1e-4)


def test_score_answers_averages_and_counts():
    predictions = ["Paris", "paris", "The Beatles\nmore text", "London", "Paris France"]
    aliases = [["Paris"], ["Paris"], ["Beatles"], ["Paris"], ["Paris"]]
    scores = score_answers(predictions, aliases)
    assert scores == {
        "em_cased": 1 / 5,
        "em": 3 / 5,
        "f1": pytest.approx((1 + 1 + 1 + 0 + 2 / 3) / 5, abs=1e-12),
        "n": 5,
        "em_cased_hits": 1,
        "em_hits": 3,
    }
    empty = score_answers([], [])
    assert empty["n"] == 0 and math.isnan(empty["em_cased"]) and math.isnan(empty["f1"])
    with pytest.raises(SortedNetError) as error:
        score_answers(["a"], [["a"], ["b"]])
    assert "1 predictions for 2 questions" in one_line(error)


# 4. Per-exit evaluation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net(embedded_root):
    from transformers import AutoModelForCausalLM

    from sortednet.model import SortedLM

    return SortedLM(AutoModelForCausalLM.from_pretrained(embedded_root / "model")).eval()


RECORDS = [
    {"question": "Which city is the capital of France?", "answers": ["Paris"], "id": "q0"},
    {"question": "Who wrote Hamlet?", "answers": ["William Shakespeare", "Shakespeare"], "id": "q1"},
    {"question": "How many legs has a spider?", "answers": ["8", "Eight"], "id": None},
]


def _meta(style: str, template: dict | None = None) -> Metadata:
    """A checkpoint record of the embedded model with prompt style ``style`` (and an exported template)."""
    return Metadata("soft", [2, 8], 8, {}, "embedded", prompt_style=style, prompt_template=template)


def test_question_prompts_use_the_checkpoint_template_like_training(tokenizer):
    question = RECORDS[0]["question"]
    triviaqa = question_prompts(tokenizer, _meta("triviaqa"), RECORDS)
    assert triviaqa[0] == tokenizer(f"Question: {question}\nAnswer:")["input_ids"]
    assert triviaqa[0][0] == tokenizer.bos_token_id
    assert question_prompts(tokenizer, _meta("alpaca"), RECORDS)[0] == (tokenizer(ALPACA.format(question))["input_ids"])
    exported = _meta("custom", {"with_input": "{input}", "without_input": "Q {instruction} A"})
    assert question_prompts(tokenizer, exported, RECORDS)[1] == tokenizer("Q Who wrote Hamlet? A")["input_ids"]


def test_evaluate_exits_scores_each_exit_greedy_answers(net, tokenizer, tmp_path):
    meta = _meta("triviaqa")
    prompts = [tokenizer(TRIVIAQA.format(r["question"]))["input_ids"] for r in RECORDS]
    last = greedy_answers(net, tokenizer, prompts, 8, 8, batch_size=2)
    # Make exit 8's first answer right, so its cased exact match is known not to be zero.
    assert answer_line(last[0])
    records = [{**RECORDS[0], "answers": ["Paris", answer_line(last[0])]}, *RECORDS[1:]]

    results = evaluate_exits(net, tokenizer, meta, records, [2, 8], max_new_tokens=8, batch_size=2)
    assert [r["exit"] for r in results] == [2, 8]
    for result in results:
        predictions = greedy_answers(net, tokenizer, prompts, result["exit"], 8, batch_size=2)
        assert [x["prediction"] for x in result["examples"]] == predictions
        expected = score_answers(predictions, [r["answers"] for r in records])
        assert {k: result[k] for k in expected} == pytest.approx(expected, nan_ok=True)
        assert [x["id"] for x in result["examples"]] == ["q0", "q1", None]
    assert results[1]["em_cased_hits"] >= 1 and results[1]["examples"][0]["em_cased"] is True

    file = write_predictions(results, tmp_path / "out" / "predictions.jsonl")
    lines = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 2 * len(records)
    assert lines[3] == {"exit": 8, **results[1]["examples"][0]}
    assert set(lines[0]) == {"exit", "id", "question", "answers", "prediction", "em_cased", "em", "f1"}


def test_evaluate_exits_refuses_bad_input(net, tokenizer):
    meta = _meta("triviaqa")
    with pytest.raises(SortedNetError) as error:
        evaluate_exits(net, tokenizer, meta, [], [8])
    assert "no TriviaQA questions" in one_line(error)
    with pytest.raises(SortedNetError) as error:
        evaluate_exits(net, tokenizer, meta, RECORDS, [0, 9])
    assert "[1, 8]" in one_line(error)


@pytest.mark.skipif(not REAL_TRIVIAQA.is_file(), reason="needs ../shared/data/triviaqa (the project's real data)")
def test_evaluate_suite_reads_the_real_file_and_refuses_an_unknown_layout(cache_dir, tmp_path, capsys):
    """`python -m sortednet.evaluate suite=triviaqa data=FILE` on llm-foundry's file as it is."""
    import lightning
    import torch

    from sortednet import evaluate

    module = sorted_module(exits=[4, 8], cache_dir=cache_dir)
    ckpt = tmp_path / "soft.ckpt"
    torch.save(
        {"epoch": 0, "global_step": 0, "pytorch-lightning_version": lightning.__version__,
         "state_dict": module.state_dict(), "sortednet": {**module.metadata().to_record(), "prompt_style": "triviaqa"}},
        ckpt,
    )  # fmt: skip
    args = ["suite=triviaqa", f"ckpt={ckpt}", "exits=[8]", "limit=3", "max_new_tokens=4", f"out={tmp_path / 'out'}"]
    assert evaluate.main([*args, f"data={REAL_TRIVIAQA}"]) == 0, capsys.readouterr().err
    lines = (tmp_path / "out" / "triviaqa_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    predicted = [json.loads(line) for line in lines]
    assert [p["question"] for p in predicted] == [r["question"] for r in read_triviaqa(str(REAL_TRIVIAQA))[:3]]
    assert predicted[0]["answers"][0] == "Onion"

    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"prompt": "Q?", "completion": "A"}) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert evaluate.main([*args, f"data={unknown}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("sortednet: error: row 0 of") and "llm-foundry {context" in line
