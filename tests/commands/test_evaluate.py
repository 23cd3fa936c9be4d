"""`python -m sortednet.evaluate`: the loss, generate, pareto, pandalm, triviaqa and analysis suites on tiny
checkpoints, answer-file reuse, the Pareto frontier, and one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from rouge_score.rouge_scorer import RougeScorer

from conftest import one_line_error, run_main, save_checkpoint, save_tiny, sorted_module
from sortednet import evaluate
from sortednet.data.alpaca import Collator, pad_id, tokenize_rows
from sortednet.embedded import make_rows
from sortednet.eval.exits import format_report, greedy_answers, greedy_ids
from sortednet.eval.pareto import pareto_frontier, pareto_table
from sortednet.inference.load import load_sorted, prompt_style_of

_run = partial(run_main, evaluate.main)  # evaluate in this process: status, stdout, stderr

# PandaLM-format items (motivation_app, instruction, input; no reference output), short enough for the tiny model.
PANDALM_ITEMS = [
    {"motivation_app": "Notes", "instruction": "Name a color.", "input": ""},
    {"motivation_app": "Mail", "instruction": "Repeat the words exactly.", "input": "apple river"},
]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """soft: the embedded 8-layer LLaMA with exits 2,4,6,8; sft: the same, objective sft, weights perturbed."""

    root = tmp_path_factory.mktemp("eval-ckpts")
    module = sorted_module(cache_dir=cache_dir)
    paths = {"soft": save_checkpoint(root / "soft.ckpt", module.state_dict(), module.metadata())}
    torch.manual_seed(3)
    state = {k: v + 0.02 * torch.randn_like(v) if v.is_floating_point() else v for k, v in module.state_dict().items()}
    paths["sft"] = save_checkpoint(root / "sft.ckpt", state, dataclasses.replace(module.metadata(), objective="sft"))
    return paths


@pytest.fixture
def rows_file(tmp_path) -> Path:
    """Alpaca rows with references, from the embedded task families (a seed training does not use)."""
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(make_rows(6, seed=11)))
    return path


def _read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------- loss


def test_loss_suite_equals_a_direct_exit_losses_pass(ckpts, rows_file, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = _run(
        ["suite=loss", f"ckpt={ckpts['soft']}", f"data={rows_file}", "batch_size=4", f"out={out}"], capsys
    )
    assert code == 0, err
    table = _read_csv(out / "loss.csv")
    assert [int(r["exit"]) for r in table] == [2, 4, 6, 8] and {r["name"] for r in table} == {"soft"}
    assert (out / "loss.png").stat().st_size > 0 and "per-exit loss" in stdout

    # The same rows, tokenized as training does, in one batch: token means must agree with the batched run.
    net, tokenizer, meta = load_sorted(str(ckpts["soft"]))
    columns = tokenize_rows(json.loads(rows_file.read_text()), tokenizer, meta.prompt_style, 512, mask_prompt=True)
    pairs = zip(columns["input_ids"], columns["labels"], strict=True)
    batch = Collator(pad_id(tokenizer))([{"input_ids": i, "labels": labels} for i, labels in pairs])
    with torch.no_grad():
        direct, agreement = net.exit_metrics(batch["input_ids"], batch["attention_mask"], batch["labels"], [2, 4, 6, 8])
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    for row in table:
        assert float(row["loss"]) == pytest.approx(float(direct[int(row["exit"])]), rel=1e-5)
        assert float(row["ppl"]) == pytest.approx(math.exp(float(row["loss"])), rel=1e-9)
        assert int(row["tokens"]) == tokens and int(row["rows"]) == 6
        # agreement with exit 8 at the same positions: expected acceptance and greedy agreement, 1 at exit 8 itself
        accept, agree = agreement.get(int(row["exit"]), (tokens, tokens))
        assert float(row["accept"]) == pytest.approx(float(accept) / tokens, rel=1e-4)
        assert float(row["agree"]) == pytest.approx(float(agree) / tokens, rel=1e-9)
    assert float(table[-1]["accept"]) == float(table[-1]["agree"]) == 1.0

    # A second run into the same directory keeps the first result and writes loss-2.csv beside it.
    before = (out / "loss.csv").read_text()
    assert _run(["suite=loss", f"ckpt={ckpts['soft']}", f"data={rows_file}", "exits=[8]", f"out={out}"], capsys)[0] == 0
    assert (out / "loss.csv").read_text() == before and len(_read_csv(out / "loss-2.csv")) == 1


def test_per_exit_loss_batches_rows_of_similar_length():
    """Rows are batched in length order (less padding); the token mean is the same as one row at a time."""
    from sortednet.eval.loss import per_exit_loss

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.widths = []

        num_layers = 1

        def exit_metrics(self, input_ids, attention_mask, labels, exits):
            self.widths.append(input_ids.shape[1])
            per_row = (labels[:, 1:] != -100).sum(1).float()  # a "loss" that is the row's length
            mean = float(input_ids[:, :1].float().mul(per_row[:, None]).sum() / per_row.sum())
            return {e: torch.tensor(mean) for e in exits}, {}

    lengths = [3, 20, 4, 19, 5, 18]
    rows = [{"input_ids": [n] * n, "labels": [-100] + [1] * (n - 1)} for n in lengths]
    net = Recorder()
    batched = per_exit_loss(net, rows, [1], pad=0, batch_size=2)
    assert net.widths == [4, 18, 20]
    single = per_exit_loss(Recorder(), rows, [1], pad=0, batch_size=1)
    assert batched[1]["loss"] == pytest.approx(single[1]["loss"]) and batched[1]["tokens"] == sum(lengths) - 6


# ---------------------------------------------------------------- generate


def test_generate_writes_one_answer_file_per_exit_and_reuses_it(ckpts, rows_file, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["suite=generate", f"ckpt={ckpts['soft']}", f"instructions={rows_file}", f"out={out}"]
    argv = [*base, "exits=[2,8]"]
    code, stdout, err = _run([*argv, "max_new_tokens=6", "batch_size=4"], capsys)
    assert code == 0, err
    items = json.loads(rows_file.read_text())
    net, tokenizer, meta = load_sorted(str(ckpts["soft"]))
    style = prompt_style_of(meta, tokenizer)
    prompts = [tokenizer(style.format(r["instruction"], r["input"]))["input_ids"] for r in items]
    for e in (2, 8):
        path = out / "answers" / f"soft_exit{e}.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(lines) == len(items)
        assert [x["output"] for x in lines] == greedy_answers(net, tokenizer, prompts, e, 6, batch_size=1)
        ids = greedy_ids(net, tokenizer, prompts, e, 6, batch_size=1)
        scorer = RougeScorer(["rougeL"], use_stemmer=True)
        for line, item, answer_ids in zip(lines, items, ids, strict=True):
            assert line["instruction"] == item["instruction"] and line["input"] == item["input"]
            assert line["reference"] == item["output"] and line["exit"] == e and line["ckpt"] == "soft"
            assert line["exact"] == (line["output"].strip() == item["output"].strip())
            assert line["tokens"] == len(answer_ids) and line["eos"] == (tokenizer.eos_token_id in answer_ids)
            assert line["rouge_l"] == scorer.score(item["output"], line["output"])["rougeL"].fmeasure
        info = json.loads((out / "answers" / f"soft_exit{e}.meta.json").read_text())
        assert info["seconds"] > 0 and info["answer_tokens"] > 0 and info["ms_per_token"] > 0
        assert info["exact_match"] == sum(x["exact"] for x in lines) / len(lines)
        assert info["rouge_l"] == pytest.approx(sum(x["rouge_l"] for x in lines) / len(lines), abs=1e-12)
        assert info["mean_answer_tokens"] == sum(map(len, ids)) / len(ids) == info["answer_tokens"] / len(ids)
        assert info["eos_share"] == sum(x["eos"] for x in lines) / len(lines)
        assert info["settings"]["max_new_tokens"] == 6 and info["settings"]["exit"] == e
    table = _read_csv(out / "generate.csv")
    assert [int(r["exit"]) for r in table] == [2, 8]
    assert {"rouge_l", "mean_answer_tokens", "eos_share"} <= set(table[0])
    assert (out / "generate.png").is_file() and "greedy answers" in stdout

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "answers").iterdir()}
    code, _, err = _run([*argv, "max_new_tokens=6"], capsys)  # same settings: nothing is regenerated
    assert code == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "answers").iterdir()} == stamps
    assert all(r["reused"] == "True" for r in _read_csv(out / "generate-2.csv"))

    code, _, err = _run([*base, "exits=[2]", "max_new_tokens=3"], capsys)
    assert code == 0, err
    assert "regenerating soft_exit2.jsonl (changed: max_new_tokens)" in err
    assert json.loads((out / "answers" / "soft_exit2.meta.json").read_text())["settings"]["max_new_tokens"] == 3
    assert (out / "answers" / "soft_exit8.jsonl").stat().st_mtime_ns == stamps["soft_exit8.jsonl"]


def test_generate_on_an_instruction_set_without_references(ckpts, tmp_path, capsys):
    instructions = tmp_path / "testset.json"
    instructions.write_text(json.dumps(PANDALM_ITEMS))
    out = tmp_path / "run"
    argv = ["suite=generate", f"ckpt={ckpts['soft']}", f"instructions={instructions}", "exits=4", f"out={out}"]
    code, _, err = _run([*argv, "max_new_tokens=4"], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in (out / "answers" / "soft_exit4.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and not any({"reference", "exact", "rouge_l"} & set(x) for x in lines)
    info = json.loads((out / "answers" / "soft_exit4.meta.json").read_text())
    assert "exact_match" not in info and "rouge_l" not in info
    assert info["mean_answer_tokens"] == sum(x["tokens"] for x in lines) / 2 and 0 <= info["eos_share"] <= 1
    code, _, err = _run([*argv, "max_new_tokens=250"], capsys)  # the tiny model's window is 256 positions
    one_line_error(code, err, "exceed the model's max_position_embeddings=256")


# ---------------------------------------------------------------- pareto


def test_pareto_frontier_of_a_hand_made_point_set():
    costs = [1.0, 2.0, 3.0, 4.0, 5.0, 2.0, 0.5]
    quality = [0.1, 0.3, 0.2, 0.5, 0.5, 0.3, math.nan]
    assert pareto_frontier(costs, quality) == [0, 1, 3]  # the tie at cost 2 keeps the first; NaN is never on it
    assert pareto_frontier([1.0, 2.0, 3.0, 4.0], [3.0, 2.5, 2.7, 2.0], higher_is_better=False) == [0, 1, 3]
    assert pareto_frontier([], []) == []
    points = [
        {"name": "soft", "exit": 2, "ms_per_token": 1.0, "exact_match": 0.4},
        {"name": "soft", "exit": 4, "ms_per_token": 2.0, "exact_match": 0.6},
        {"name": "sft", "exit": 2, "ms_per_token": 1.1, "exact_match": 0.1},
        {"name": "sft", "exit": 4, "ms_per_token": 1.9, "exact_match": 0.7},
    ]
    table = pareto_table(points, "exact_match")
    assert [r["on_frontier"] for r in table] == [True, True, True, True]
    assert [r["on_global_frontier"] for r in table] == [True, False, False, True]


def test_pareto_suite_measures_cost_and_scores_exact_match(ckpts, rows_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["suite=pareto", f"ckpt={ckpts['soft']}", "exits=[2,8]", f"instructions={rows_file}", "max_new_tokens=4"]
    code, stdout, err = _run([*argv, f"out={out}"], capsys)
    assert code == 0, err
    table = _read_csv(out / "pareto.csv")
    assert [(r["name"], int(r["exit"])) for r in table] == [("soft", 2), ("soft", 8)]
    assert all(float(r["ms_per_token"]) > 0 for r in table)
    profile = json.loads(Path(f"{ckpts['soft']}.latency.json").read_text())  # shared with generate exit=auto
    (entry,) = profile.values()
    assert [float(r["ms_per_token"]) for r in table] == pytest.approx(
        [entry["ms_per_token"][e] for e in ("2", "8")], abs=1e-4
    )
    for r in table:
        info = json.loads((out / "answers" / f"soft_exit{r['exit']}.meta.json").read_text())
        assert float(r["exact_match"]) == pytest.approx(info["exact_match"])
    assert (out / "pareto.png").stat().st_size > 0 and "exact_match against ms/token" in stdout


def test_pareto_suite_on_loss_with_recorded_costs(ckpts, rows_file, tmp_path, capsys):
    """Costs come from the latency profile cached beside each checkpoint (here written by the test)."""
    from sortednet.inference.latency import PROFILE_REPEATS, PROFILE_TOKENS, device_key

    costs = {"soft": {"2": 1.0, "8": 4.0}, "sft": {"2": 1.5, "8": 3.0}}
    paths = []
    for name in ("soft", "sft"):
        path = tmp_path / f"{name}.ckpt"
        shutil.copyfile(ckpts[name], path)
        key = device_key(torch.device("cpu"), torch.float32)
        Path(f"{path}.latency.json").write_text(
            json.dumps({key: {"tokens": PROFILE_TOKENS, "repeats": PROFILE_REPEATS, "ms_per_token": costs[name]}})
        )
        paths.append(str(path))
    out = tmp_path / "run"
    argv = ["suite=pareto", f"ckpt=[{','.join(paths)}]", "exits=[2,8]", "metric=loss", f"data={rows_file}"]
    code, _, err = _run([*argv, "device=cpu", f"out={out}"], capsys)
    assert code == 0, err
    table = _read_csv(out / "pareto.csv")
    assert [(r["name"], int(r["exit"])) for r in table] == [("soft", 2), ("soft", 8), ("sft", 2), ("sft", 8)]
    assert [float(r["ms_per_token"]) for r in table] == [1.0, 4.0, 1.5, 3.0]
    loss = _read_csv(_loss_run(paths[0], rows_file, tmp_path, capsys))
    assert [float(r["loss"]) for r in table[:2]] == pytest.approx([float(r["loss"]) for r in loss])
    values = [float(r["loss"]) for r in table]
    overall = pareto_frontier([1.0, 4.0, 1.5, 3.0], values, higher_is_better=False)
    assert [r["on_global_frontier"] == "True" for r in table] == [i in overall for i in range(4)]
    assert table[0]["on_global_frontier"] == "True"  # the cheapest point is always on the frontier
    assert (out / "pareto.png").stat().st_size > 0


def test_pareto_reads_the_loss_suite_of_its_out_under_the_same_settings_only(ckpts, rows_file, tmp_path, capsys):
    """suite=loss then suite=pareto metric=loss into one `out`: the Pareto points take loss.csv's values (edited
    here, so reading is told apart from computing); a rewritten checkpoint or another max_length computes again."""
    from sortednet.inference.latency import PROFILE_REPEATS, PROFILE_TOKENS, device_key

    path = tmp_path / "soft.ckpt"
    shutil.copyfile(ckpts["soft"], path)
    key = device_key(torch.device("cpu"), torch.float32)
    profile = {key: {"tokens": PROFILE_TOKENS, "repeats": PROFILE_REPEATS, "ms_per_token": {"2": 1.0, "8": 4.0}}}
    Path(f"{path}.latency.json").write_text(json.dumps(profile))
    out = tmp_path / "run"
    common = [f"ckpt={path}", "exits=[2,8]", f"data={rows_file}", "device=cpu", f"out={out}"]
    code, _, err = _run(["suite=loss", *common], capsys)
    assert code == 0, err
    measured = [float(r["loss"]) for r in _read_csv(out / "loss.csv")]
    text = (out / "loss.csv").read_text()
    for value, edited in zip(measured, ("11.5", "7.25"), strict=True):
        text = text.replace(f",{value!r},", f",{edited},")
    (out / "loss.csv").write_text(text)

    code, _, err = _run(["suite=pareto", "metric=loss", *common], capsys)
    assert code == 0, err
    assert "loss read from" in err
    assert [float(r["loss"]) for r in _read_csv(out / "pareto.csv")] == [11.5, 7.25]

    code, _, err = _run(["suite=pareto", "metric=loss", *common, "max_length=64"], capsys)
    assert code == 0, err
    assert "loss read from" not in err
    for rewritten in (rows_file, path):  # the data, then the checkpoint, rewritten
        os.utime(rewritten, ns=(rewritten.stat().st_atime_ns, rewritten.stat().st_mtime_ns + 10**9))
        code, _, err = _run(["suite=pareto", "metric=loss", *common], capsys)
        assert code == 0, err
        assert "loss read from" not in err
    # nothing written is overwritten: the later runs' tables are pareto-2.csv, pareto-3.csv, pareto-4.csv
    assert [float(r["loss"]) for r in _read_csv(out / "pareto-4.csv")] == pytest.approx(measured)


def _loss_run(ckpt, rows_file, tmp_path, capsys) -> Path:
    out = tmp_path / "loss-run"
    code, _, err = _run(["suite=loss", f"ckpt={ckpt}", f"data={rows_file}", "exits=[2,8]", f"out={out}"], capsys)
    assert code == 0, err
    return out / "loss.csv"


# ---------------------------------------------------------------- pandalm, triviaqa, analysis


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory, tokenizer) -> Path:
    path = save_tiny("llama", tmp_path_factory.mktemp("judge"), vocab_size=len(tokenizer), max_position_embeddings=2048)
    tokenizer.save_pretrained(path)
    return path


def test_pandalm_suite_judges_exits_in_both_orders(ckpts, judge_dir, tmp_path, capsys):
    instructions = tmp_path / "testset.json"
    instructions.write_text(json.dumps(PANDALM_ITEMS))
    out = tmp_path / "run"
    argv = [
        "suite=pandalm", f"ckpt=[{ckpts['soft']},{ckpts['sft']}]", "exits=[2,8]", f"instructions={instructions}",
        f"judge={judge_dir}", "pairs=diagonal", "max_new_tokens=4", "judge_max_new_tokens=3", f"out={out}",
    ]  # fmt: skip
    code, stdout, err = _run(argv, capsys)
    assert code == 0, err
    long = _read_csv(out / "pandalm_long.csv")
    assert [(r["row"], r["col"]) for r in long] == [("soft@2", "sft@2"), ("soft@8", "sft@8")]
    for r in long:  # every item judged in both orders
        assert int(r["judgements"]) == 2 * len(PANDALM_ITEMS)
        assert int(r["total"]) + int(r["unparseable"]) == int(r["judgements"])
    verdicts = [json.loads(line) for line in (out / "pandalm_verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 2 * 2 * len(PANDALM_ITEMS) and {v["order"] for v in verdicts} == {"ab", "ba"}
    assert (out / "pandalm.png").is_file() and (out / "pandalm.csv").is_file() and "soft@8" in stdout
    assert (out / "answers" / "sft_exit8.jsonl").is_file()


def test_pandalm_refuses_answer_files_that_do_not_match(ckpts, judge_dir, tmp_path, capsys):
    first, second, third = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    first.write_text("".join(json.dumps({**x, "output": "red"}) + "\n" for x in PANDALM_ITEMS))
    second.write_text(json.dumps({**PANDALM_ITEMS[0], "output": "blue"}) + "\n")
    third.write_text("".join(json.dumps({**x, "instruction": "Other.", "output": "x"}) + "\n" for x in PANDALM_ITEMS))
    common = ["suite=pandalm", f"judge={judge_dir}", f"out={tmp_path / 'run'}"]
    code, _, err = _run([*common, f"answers=[{first},{second}]"], capsys)
    one_line_error(code, err, "has 1 answers for 2 instructions")
    code, _, err = _run([*common, f"answers=[{first},{third}]"], capsys)
    one_line_error(code, err, "row 0 answers 'Other.'")


def test_triviaqa_and_analysis_suites(ckpts, tmp_path, capsys):
    questions = tmp_path / "trivia.json"
    questions.write_text(json.dumps([{"question": "What color is the apple?", "answers": ["red", "Red"]},
                                     {"question": "What is 2 plus 3?", "answers": ["5", "five"]}]))  # fmt: skip
    out = tmp_path / "run"
    code, stdout, err = _run(
        ["suite=triviaqa", f"ckpt={ckpts['soft']}", f"data={questions}", "exits=[2,8]", f"out={out}"], capsys
    )
    assert code == 0, err
    table = _read_csv(out / "triviaqa.csv")
    assert [int(r["exit"]) for r in table] == [2, 8] and all(int(r["n"]) == 2 for r in table)
    assert len((out / "triviaqa_predictions.jsonl").read_text().splitlines()) == 4
    assert (out / "triviaqa.png").is_file() and "em_cased" in stdout

    instructions = tmp_path / "testset.json"
    instructions.write_text(json.dumps(PANDALM_ITEMS))
    argv = ["suite=analysis", f"ckpt=[{ckpts['soft']},{ckpts['sft']}]", f"instructions={instructions}"]
    code, stdout, err = _run([*argv, "exits=[2,4]", "positions=3", f"out={out}"], capsys)
    assert code == 0, err
    rows = _read_csv(out / "analysis.csv")
    assert {r["label"] for r in rows} == {"vs soft@8", "vs sft@8"} and {int(r["exit"]) for r in rows} == {2, 4}
    assert all(float(r["kl"]) >= -1e-9 and -1 <= float(r["cosine"]) <= 1 for r in rows)
    assert (out / "analysis.png").is_file() and "KL and cosine" in stdout


# ---------------------------------------------------------------- errors


def test_bad_input_is_one_line_with_status_2(ckpts, tmp_path, capsys):
    soft = f"ckpt={ckpts['soft']}"
    out = f"out={tmp_path / 'run'}"
    for argv, message in [
        (["suite=speed", soft, out], "unknown suite='speed'; pass suite=loss|generate"),
        ([soft, out], "no suite given"),
        (["suite=loss", out], "no checkpoint given"),
        (["suite=loss", f"ckpt={tmp_path / 'missing.ckpt'}", out], "not found"),
        (["suite=loss", soft, "exits=[3,4]", out], "exits [3] are not exits of soft"),
        (["suite=generate", soft, f"instructions={tmp_path / 'none.json'}", out], "instruction set"),
        (["suite=generate", soft, out], "curl -L -o"),
        (["suite=loss", f"ckpt=[{ckpts['soft']},{ckpts['soft']}]", out], "repeat"),
        (["suite=pareto", soft, "metric=bleu", out], "unknown metric='bleu'"),
        (["suite=pareto", soft, f"instructions={Path(__file__)}", out], ".json or .jsonl"),
        (["suite=loss", soft, "colour=red", out], "unknown key 'colour'"),
    ]:
        one_line_error(*_run(argv, capsys)[::2], message)
    assert os.environ["SORTEDNET_CACHE"] in _run(["suite=generate", soft, out], capsys)[2]


def test_default_names_and_output_directory():
    assert evaluate.default_name("runs/a/checkpoints/last.ckpt") == "a"
    assert evaluate.default_name("/x/soft.ckpt") == "soft" and evaluate.default_name("/x/export-4/") == "export-4"
    assert evaluate.default_out().parts[:2] == ("outputs", "eval")


def test_results_go_to_wandb_as_tables_and_images(tmp_path):
    import wandb

    from sortednet.eval.output import RunDir, plot_per_exit

    class Recorder:  # stands in for a wandb run: what RunDir logs, without a W&B process
        def __init__(self):
            self.logged = {}

        def log(self, data):
            self.logged.update(data)

    recorder = Recorder()
    run = RunDir(tmp_path / "out", recorder)
    rows = [{"name": "soft", "exit": 2, "loss": 0.5}, {"name": "soft", "exit": 4, "loss": 0.25}]
    csv_path = run.table("loss", rows)
    png = run.figure("loss", plot_per_exit(rows, [("loss", "loss")], "per-exit loss"))
    assert csv_path.read_text().splitlines() == ["name,exit,loss", "soft,2,0.5", "soft,4,0.25"]
    table = recorder.logged["eval/loss/table"]
    assert isinstance(table, wandb.Table) and table.columns == ["name", "exit", "loss"]
    assert table.data == [["soft", 2, 0.5], ["soft", 4, 0.25]]
    assert isinstance(recorder.logged["eval/loss/plot"], wandb.Image) and png.stat().st_size > 1000
    run.image("heatmap", png)
    assert isinstance(recorder.logged["eval/heatmap/plot"], wandb.Image)


def test_rouge_l_is_the_f_measure_of_the_longest_common_subsequence():
    from sortednet.eval.generation import rouge_l

    # LCS "the cat sat" = 3 tokens: precision 3/3, recall 3/6 -> F = 2/3; stemming maps "sitting" to "sit"
    assert rouge_l(["The cat sat.", "cats sitting"], ["the cat sat on the mat", "cat sit"]) == pytest.approx(
        [2 / 3, 1.0]
    )


def test_the_per_exit_report_is_a_markdown_table():
    """`sortednet.train`'s closing table: the columns a report has, integers as they are, the rest to 3 decimals."""
    report = [
        {"exit": 2, "layers": 2, "params_M": 0.5093, "val_loss": 0.0441, "val_ppl": 1.045, "exact_match": 0.97},
        {"exit": 4, "layers": 4, "params_M": 0.878, "val_loss": 0.0333, "val_ppl": 1.034, "exact_match": 1.0},
    ]
    assert format_report(report, title="objective=soft, exits=[2, 4]").splitlines() == [
        "objective=soft, exits=[2, 4]",
        "| exit | layers | params_M | val_loss | val_ppl | exact_match |",
        "|---|---|---|---|---|---|",
        "| 2 | 2 | 0.509 | 0.044 | 1.045 | 0.970 |",
        "| 4 | 4 | 0.878 | 0.033 | 1.034 | 1.000 |",
    ]
