"""suite=lm_eval: lm-evaluation-harness on each exit as the sub-model it is, against lm-eval on the exported
sub-model directory; local task YAMLs over local JSON (no hub); one-line errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from conftest import one_line_error, save_checkpoint, sorted_module
from sortednet import evaluate, export

WORDS = ["red", "blue", "green", "apple", "river", "stone", "cat", "dog"]
MC_YAML = """task: sn_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""
GEN_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 5
  do_sample: false
metric_list:
  - metric: exact_match
"""


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, cache_dir) -> dict:
    """A SoFT checkpoint of the embedded model (exits 2,4,6,8) and a task directory: a multiple-choice task and a
    generate_until task over local JSON lines."""

    root = tmp_path_factory.mktemp("lm-eval")
    module = sorted_module(cache_dir=cache_dir)
    ckpt = save_checkpoint(root / "soft.ckpt", module.state_dict(), module.metadata())
    tasks = root / "tasks"
    tasks.mkdir()
    choice = [
        {"question": f"Which word is {w}?", "choices": [w, *WORDS[i + 1 : i + 4]], "answer": i % 4}
        for i, w in enumerate(WORDS[:5])
    ]
    (tasks / "choice.yaml").write_text(MC_YAML.format(data=_jsonl(root / "choice.jsonl", choice)))
    gen = [{"question": f"Say {w}.", "answer": w} for w in WORDS[:4]]
    (tasks / "gen.yaml").write_text(GEN_YAML.format(name="sn_gen", data=_jsonl(root / "gen.jsonl", gen)))
    return {"root": root, "ckpt": ckpt, "tasks": tasks, "gen": gen}


def _reference(directory: Path, tasks: list[str], include_path: Path, log_samples: bool = False) -> dict:
    """lm-eval on its own: HFLM loading the exported sub-model directory by path."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model = HFLM(pretrained=str(directory), device="cpu", batch_size=2)
    manager = TaskManager(include_path=str(include_path))
    return simple_evaluate(model=model, tasks=tasks, task_manager=manager, log_samples=log_samples)


@pytest.mark.slow
def test_each_exit_gives_lm_evals_numbers_for_its_exported_sub_model(setup, tmp_path, capsys):
    root, tasks = setup["root"], setup["tasks"]
    exported = tmp_path / "exit4"
    assert export.main([f"ckpt={setup['ckpt']}", "exit=4", f"out={exported}"]) == 0
    reference = _reference(exported, ["sn_choice", "sn_gen"], tasks, log_samples=True)

    # A second generate_until task whose targets are, for two of its four questions, what the exported exit-4
    # model generates: an exact match of 0.5 then says the suite's exit 4 generates exactly those answers.
    answers = [s["filtered_resps"][0] for s in sorted(reference["samples"]["sn_gen"], key=lambda s: s["doc_id"])]
    assert any(a.strip() for a in answers)  # the random tiny model does generate something
    echo = [
        {**row, "answer": answer if i % 2 else "?"}
        for i, (row, answer) in enumerate(zip(setup["gen"], answers, strict=True))
    ]
    (tasks / "echo.yaml").write_text(GEN_YAML.format(name="sn_echo", data=_jsonl(root / "echo.jsonl", echo)))

    out = tmp_path / "run"
    argv = ["suite=lm_eval", f"ckpt={setup['ckpt']}", "tasks=[sn_choice,sn_gen,sn_echo]", f"include_path={tasks}"]
    assert evaluate.main([*argv, "exits=[4,8]", "batch_size=2", f"out={out}"]) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    result = json.loads((out / "lm_eval.json").read_text())["results"]["soft"]
    for task in ("sn_choice", "sn_gen"):
        assert result["4"]["results"][task] == reference["results"][task]
    assert result["4"]["results"]["sn_echo"]["exact_match,none"] == 0.5
    assert result["4"]["n-samples"]["sn_choice"]["effective"] == 5

    with (out / "lm_eval.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["exit"]) for r in table] == [4, 8]
    assert float(table[0]["sn_choice/acc,none"]) == reference["results"]["sn_choice"]["acc,none"]
    assert "sn_echo/exact_match,none" in table[0] and "sn_choice/acc_stderr,none" in table[0]
    assert (out / "lm_eval.png").stat().st_size > 0 and "sn_choice/acc,none" in stdout


def test_limit_and_num_fewshot_reach_lm_eval(setup, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["suite=lm_eval", f"ckpt={setup['ckpt']}", "tasks=[sn_choice]", f"include_path={setup['tasks']}"]
    assert evaluate.main([*argv, "exits=[2]", "limit=2", "num_fewshot=1", f"out={out}"]) == 0, capsys.readouterr().err
    result = json.loads((out / "lm_eval.json").read_text())["results"]["soft"]["2"]
    assert result["n-samples"]["sn_choice"]["effective"] == 2 and result["n-shot"]["sn_choice"] == 1


def test_bad_lm_eval_input_is_one_line(setup, tmp_path, capsys, monkeypatch):
    ckpt, tasks = setup["ckpt"], setup["tasks"]
    cases = [
        (["tasks=[sn_chioce]", f"include_path={tasks}"], "unknown lm-eval task 'sn_chioce'; did you mean sn_choice"),
        (["tasks=[sn_choice]", f"include_path={tmp_path / 'none'}"], "is not a directory"),
        ([f"include_path={tasks}"], "needs tasks=[...]"),
        (["tasks=[sn_choice]", f"include_path={tasks}", "num_fewshot=-1"], "must be 0 or more"),
    ]
    for argv, message in cases:
        code = evaluate.main(["suite=lm_eval", f"ckpt={ckpt}", *argv, f"out={tmp_path / 'never'}"])
        one_line_error(code, capsys.readouterr().err, message)
    code = evaluate.main(["suite=loss", f"ckpt={ckpt}", "tasks=[sn_choice]", f"out={tmp_path / 'never'}"])
    assert code == 2 and "are for suite=lm_eval" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)  # as if lm-eval were not installed
    code = evaluate.main(["suite=lm_eval", f"ckpt={ckpt}", "tasks=[sn_choice]", f"out={tmp_path / 'never'}"])
    assert code == 2 and "pip install 'sortednet[eval]'" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
