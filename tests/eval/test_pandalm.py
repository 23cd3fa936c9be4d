"""The PandaLM pairwise judge: prompt format, verdict parsing, both-order aggregation, the score, the matrix
outputs (CSV, heatmap), a tiny real judge end to end, and one-line errors for bad input."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest

from conftest import save_tiny
from sortednet.errors import SortedNetError
from sortednet.eval import pairwise, pandalm
from sortednet.eval.exits import greedy_answers
from sortednet.eval.pairwise import judge_matrix, plot_heatmap, write_matrix_csv
from sortednet.eval.pandalm import build_prompt, judge_pair_sets, load_judge, parse_verdict, score
from sortednet.model import SortedLM

ITEMS = [
    {"instruction": "What color is the apple?", "input": ""},
    {"instruction": "Repeat the words exactly.", "input": "river stone"},
    {"instruction": "What is 2 plus 3?"},
]


def _records(outputs: list[str], items=ITEMS) -> list[dict]:
    """Answer records as `evaluate suite=generate` writes them."""
    return [
        {"instruction": it["instruction"], "input": it.get("input", ""), "output": out, "exit": 4, "ckpt": "x.ckpt"}
        for it, out in zip(items, outputs, strict=True)
    ]


# ---------------------------------------------------------------- prompt


def test_prompt_with_input_is_pandalms_training_format():
    prompt = build_prompt("Summarize.", "Rose: analyse data", "Rose analyses.", "Data.")
    assert prompt == (
        "Below are two responses for a given task. The task is defined by the Instruction with an Input that "
        "provides further context. Evaluate the responses and generate a reference answer for the task.\n\n"
        "### Instruction:\nSummarize.\n\n### Input:\nRose: analyse data\n\n"
        "### Response 1:\nRose analyses.\n\n### Response 2:\nData.\n\n### Evaluation:\n"
    )


@pytest.mark.parametrize("empty_input", ["", None])
def test_prompt_without_input_has_no_input_section(empty_input):
    prompt = build_prompt("Name a fruit.", empty_input, "Apple", "Stone")
    assert prompt == (
        "Below are two responses for a given task. The task is defined by the Instruction. Evaluate the "
        "responses and generate a reference answer for the task.\n\n### Instruction:\nName a fruit.\n\n"
        "### Response 1:\nApple\n\n### Response 2:\nStone\n\n### Evaluation:\n"
    )
    assert "Input" not in prompt


def test_prompt_sections_come_in_order_and_responses_are_cleaned():
    prompt = build_prompt("Do X.", "some input", "  <s>first</s>\n\n", "\nsecond<unk> ")
    titles = ["### Instruction:", "### Input:", "### Response 1:", "### Response 2:", "### Evaluation:"]
    starts = [prompt.index(title) for title in titles]
    assert starts == sorted(starts)
    assert "### Response 1:\nfirst\n\n### Response 2:\nsecond\n\n" in prompt
    assert "<s>" not in prompt and "<unk>" not in prompt


# ---------------------------------------------------------------- verdicts and score


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("1\n\n### Reason: Response 1 is right.\n\n### Reference: Red.\n", "1"),
        ("2\n\n### Reason: ...", "2"),
        ("Tie\n\n### Reason: both are fine", "tie"),
        ("tie", "tie"),
        ("TIE  \n", "tie"),
        ("\n\n  1\n", "1"),
        ("2", "2"),
        ("1\r\n\r\n### Reason: x", "1"),
        ("", None),
        ("   \n\n", None),
        ("Response 1", None),
        ("1.", None),
        ("1 is better", None),
        ("12", None),
        ("3\n", None),
        ("tie.", None),
        ("### Reason: 1", None),
        ("the first one\n1", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_score_formula_on_a_hand_made_verdict_list():
    outcomes = ["win"] * 5 + ["loss"] * 2 + ["tie"] * 2 + ["unparseable"]
    result = score(outcomes)
    assert result == {
        "wins": 5,
        "losses": 2,
        "ties": 2,
        "total": 9,
        "unparseable": 1,
        "judgements": 10,
        "unparseable_rate": 0.1,
        "score": 3 / 9,
    }
    assert score([{"outcome": o} for o in outcomes]) == result  # records count like strings


def test_score_with_nothing_parseable_is_nan_and_unknown_outcomes_are_refused():
    result = score(["unparseable", "unparseable"])
    assert result["total"] == 0 and result["unparseable_rate"] == 1.0 and math.isnan(result["score"])
    assert math.isnan(score([])["unparseable_rate"])
    assert score(["loss", "loss"])["score"] == -1.0
    with pytest.raises(SortedNetError, match=r"unknown outcomes \['draw'\]"):
        score(["win", "draw"])


# ---------------------------------------------------------------- both-order aggregation with a stand-in judge


def _fake_judge(monkeypatch, verdict_of) -> list[str]:
    """Replace the model's decoding by ``verdict_of(prompt)``; return the prompts it was shown."""
    seen = []

    def judge_texts(judge, tokenizer, prompts, batch_size, max_new_tokens):
        seen.extend(prompts)
        return [verdict_of(p) for p in prompts]

    monkeypatch.setattr(pandalm, "_judge_texts", judge_texts)
    return seen


def _response(prompt: str, k: int) -> str:
    return prompt.split(f"### Response {k}:\n")[1].split("\n\n")[0]


def test_each_pair_is_judged_in_both_orders(monkeypatch):
    seen = _fake_judge(monkeypatch, lambda p: "1\n\n### Reason: r")
    records = judge_pair_sets(None, None, ITEMS, ["a0", "a1", "a2"], ["b0", "b1", "b2"])
    assert [(r["item"], r["order"]) for r in records] == [(i, o) for i in range(3) for o in ("ab", "ba")]
    assert [(_response(p, 1), _response(p, 2)) for p in seen] == [
        pair for i in range(3) for pair in ((f"a{i}", f"b{i}"), (f"b{i}", f"a{i}"))
    ]
    assert "### Input:\nriver stone" in seen[2] and "### Input:" not in seen[0] + seen[4]
    assert [r["instruction"] for r in records[::2]] == [it["instruction"] for it in ITEMS]


def test_a_judge_that_flips_with_the_order_scores_zero(monkeypatch):
    # Always "Response 1": A wins when first, loses when second.
    _fake_judge(monkeypatch, lambda p: "1\n\n### Reason: the first one")
    records = judge_pair_sets(None, None, ITEMS, ["good"] * 3, ["bad"] * 3)
    assert [r["outcome"] for r in records] == ["win", "loss"] * 3
    assert [r["verdict"] for r in records] == ["1"] * 6
    counts = score(records)
    assert (counts["wins"], counts["losses"], counts["total"], counts["score"]) == (3, 3, 6, 0.0)


def test_a_consistent_judge_and_unparseable_verdicts(monkeypatch):
    def prefers_good(prompt):
        if "odd" in prompt:
            return "I cannot decide."
        return "1" if _response(prompt, 1) == "good" else "2" if _response(prompt, 2) == "good" else "Tie"

    _fake_judge(monkeypatch, prefers_good)
    records = judge_pair_sets(None, None, ITEMS, ["good", "same", "odd"], ["bad", "same", "bad"])
    assert [r["outcome"] for r in records] == ["win", "win", "tie", "tie", "unparseable", "unparseable"]
    assert records[1]["verdict"] == "2" and records[4]["raw"] == "I cannot decide."
    assert score(records) == score(["win", "win", "tie", "tie", "unparseable", "unparseable"])
    assert score(records)["score"] == 2 / 4


def test_matrix_records_one_cell_per_row_and_column(monkeypatch):
    _fake_judge(monkeypatch, lambda p: "1" if _response(p, 1).startswith("long") else "2")
    rows = {"soft@2": ["long answer"] * 3, "soft@4": _records(["short"] * 3)}
    cols = {"sft@4": ["short"] * 3, "sft@2": ["long too"] * 3}
    cells = judge_matrix(None, None, ITEMS, rows, cols)
    assert [(c["row"], c["col"]) for c in cells] == [(r, c) for r in rows for c in cols]
    # long beats short in both orders; long vs long flips with the order; short vs short as well.
    assert [c["score"] for c in cells] == [1.0, 0.0, 0.0, -1.0]
    assert all(c["judgements"] == 6 and len(c["details"]) == 6 for c in cells)


# ---------------------------------------------------------------- a real (tiny, random) judge


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory, tokenizer) -> Path:
    # Larger initial weights than the default make the random judge's continuations differ from prompt to prompt.
    path = tmp_path_factory.mktemp("judge")
    save_tiny("llama", path, vocab_size=len(tokenizer), max_position_embeddings=512, initializer_range=0.2)
    tokenizer.save_pretrained(path)
    return path


def test_a_real_tiny_judge_runs_end_to_end(judge_dir, tokenizer):
    judge, judge_tokenizer = load_judge(str(judge_dir), "cpu")
    assert tokenizer.pad_token is None  # the embedded tokenizer has eos only: load_judge pads with it
    assert judge_tokenizer.pad_token == judge_tokenizer.eos_token == "</s>"
    assert judge_tokenizer.padding_side == "left" and not judge.training

    answers_a = _records(["The apple is red.", "river stone", "5"])
    # The last item's prompts are the longest, so length-sorted batching reorders them.
    answers_b = ["blue", "stone", "six, or maybe five or four; I am not sure of it at all, sorry"]
    records = judge_pair_sets(judge, judge_tokenizer, ITEMS, answers_a, answers_b, batch_size=4, max_new_tokens=5)
    assert len(records) == 2 * len(ITEMS)
    for r in records:
        assert r["verdict"] == parse_verdict(r["raw"])
        assert (r["outcome"] == "unparseable") == (r["verdict"] is None)
    counts = score(records)
    assert counts["judgements"] == 6 and counts["total"] + counts["unparseable"] == 6
    assert counts["unparseable"] == sum(r["verdict"] is None for r in records)

    # Batched, length-sorted judging returns each prompt's own greedy continuation, in item order.
    prompts = [
        build_prompt(it["instruction"], it.get("input", ""), *pair)
        for it, a, b in zip(ITEMS, answers_a, answers_b, strict=True)
        for pair in ((a["output"], b), (b, a["output"]))
    ]
    ids = [judge_tokenizer(p)["input_ids"] for p in prompts]
    alone = greedy_answers(SortedLM(judge), judge_tokenizer, ids, 4, 5, batch_size=1)
    assert len(set(alone)) > 3 and [r["raw"] for r in records] == alone


def test_judge_prompts_longer_than_the_judge_are_refused(judge_dir, tokenizer):
    judge, judge_tokenizer = load_judge(str(judge_dir), "cpu")
    long = "river stone " * 300
    with pytest.raises(SortedNetError, match=r"exceeds the judge's 512 positions; generate shorter answers"):
        judge_pair_sets(judge, judge_tokenizer, ITEMS[:1], [long], ["x"], max_new_tokens=4)


def test_load_judge_needs_a_pad_or_eos_token(tmp_path, tokenizer):
    path = save_tiny("llama", tmp_path / "judge", vocab_size=len(tokenizer))
    bare = copy.deepcopy(tokenizer)
    bare.eos_token = None
    bare.save_pretrained(path)
    with pytest.raises(SortedNetError, match=r"^judge tokenizer at .*judge has neither pad nor eos token; "):
        load_judge(str(path), "cpu")
    with pytest.raises(SortedNetError, match="does not exist"):
        load_judge(str(tmp_path / "missing"), "cpu")


# ---------------------------------------------------------------- matrix outputs

CELLS = [
    {"row": "soft@2", "col": "sft@2", **score(["win"] * 5 + ["loss"] * 2 + ["tie"] * 2 + ["unparseable"])},
    {"row": "soft@2", "col": "sft@4", **score(["loss"] * 4)},
    {"row": "soft@4", "col": "sft@2", **score(["unparseable"] * 2)},
]


def test_matrix_csv_has_the_grid_and_every_count(tmp_path):
    grid_path, long_path = write_matrix_csv(CELLS, tmp_path / "out" / "pandalm.csv")
    assert grid_path == tmp_path / "out" / "pandalm.csv" and long_path == tmp_path / "out" / "pandalm_long.csv"
    grid = list(csv.reader(grid_path.open()))
    assert grid[0] == ["model A exit \\ model B exit", "sft@2", "sft@4"]
    assert [row[0] for row in grid[1:]] == ["soft@2", "soft@4"]
    assert float(grid[1][1]) == 3 / 9 and float(grid[1][2]) == -1.0
    assert grid[2][1] == "nan" and grid[2][2] == ""  # nothing parsed; pair not judged

    rows = list(csv.DictReader(long_path.open()))
    assert list(rows[0]) == list(pairwise.LONG_COLUMNS)
    assert [(r["row"], r["col"]) for r in rows] == [(c["row"], c["col"]) for c in CELLS]
    first = rows[0]
    assert (first["wins"], first["losses"], first["ties"], first["total"]) == ("5", "2", "2", "9")
    assert (first["unparseable"], first["judgements"], float(first["unparseable_rate"])) == ("1", "10", 0.1)
    assert float(first["score"]) == 3 / 9


def test_heatmap_png_is_written(tmp_path):
    from matplotlib.image import imread

    path = plot_heatmap(CELLS, tmp_path / "plots" / "pandalm.png", title="SoFT vs SFT")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(path).shape
    assert height > 100 and width > 100


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("answers_a", "answers_b", "message"),
    [
        (["x"] * 3, ["x"] * 2, r"answer set 'b' has 2 answers for 3 instructions"),
        (["x"] * 4, ["x"] * 3, r"answer set 'a' has 4 answers for 3 instructions"),
        (
            ["x"] * 3,
            _records(["x"] * 3, [ITEMS[0], {"instruction": "Something else?"}, ITEMS[2]]),
            r"answer set 'b' row 1 answers 'Something else\?' but the instruction set's row 1 is 'Repeat the",
        ),
        (
            _records(["x"] * 3, [ITEMS[0], {**ITEMS[1], "input": "other words"}, ITEMS[2]]),
            ["x"] * 3,
            r"answer set 'a' row 1 answers",
        ),
        ([{"instruction": it["instruction"]} for it in ITEMS], ["x"] * 3, r"row 0 is neither a string nor a record"),
    ],
)
def test_bad_answer_sets_are_one_line_errors_before_judging(monkeypatch, answers_a, answers_b, message):
    _fake_judge(monkeypatch, lambda p: pytest.fail("judged despite bad input"))
    with pytest.raises(SortedNetError, match=message) as error:
        judge_pair_sets(None, None, ITEMS, answers_a, answers_b)
    assert "\n" not in str(error.value)


def test_bad_matrix_and_item_input(monkeypatch, tmp_path):
    _fake_judge(monkeypatch, lambda p: pytest.fail("judged despite bad input"))
    with pytest.raises(SortedNetError, match="the instruction set is empty"):
        judge_pair_sets(None, None, [], [], [])
    with pytest.raises(SortedNetError, match="row 1 has no text 'instruction'"):
        judge_pair_sets(None, None, [ITEMS[0], {"input": "x"}], ["x", "y"], ["x", "y"])
    with pytest.raises(SortedNetError, match="at least one row and one column"):
        judge_matrix(None, None, ITEMS, {"soft@2": ["x"] * 3}, {})
    # A bad column is found before the first cell is judged.
    with pytest.raises(SortedNetError, match="answer set 'sft@8' has 1 answers"):
        judge_matrix(None, None, ITEMS, {"soft@2": ["x"] * 3}, {"sft@4": ["x"] * 3, "sft@8": ["x"]})
    with pytest.raises(SortedNetError, match="no judge matrix records"):
        write_matrix_csv([], tmp_path / "m.csv")


SHARED_TESTSET = Path(__file__).resolve().parents[3] / "shared" / "data" / "pandalm" / "testset-inference-v1.json"


@pytest.mark.skipif(not SHARED_TESTSET.is_file(), reason="PandaLM's test set copy (../shared/data/pandalm) is absent")
def test_pandalms_own_test_set_reads_and_prompts_in_its_format():
    from sortednet.eval.generation import read_instructions

    items = read_instructions(str(SHARED_TESTSET))
    assert len(items) == 170 and all(item["instruction"].strip() or item["input"].strip() for item in items)
    with_input = next(item for item in items if item["input"])
    prompt = pandalm.build_prompt(with_input["instruction"], with_input["input"], "first", "second")
    assert prompt.startswith(pandalm.HEADER_WITH_INPUT) and f"### Input:\n{with_input['input']}" in prompt
    assert prompt.endswith("### Response 1:\nfirst\n\n### Response 2:\nsecond\n\n### Evaluation:\n")
