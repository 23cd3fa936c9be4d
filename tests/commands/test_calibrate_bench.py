"""The calibration command and `bench generate`, on the checkpoints of conftest's `ckpts` fixture."""

from __future__ import annotations

import re

import pytest

from sortednet import bench, calibrate
from sortednet.inference.calibrate import GRID


def test_calibrate_prints_thresholds_and_its_table(ckpts, capsys):
    assert calibrate.main([f"ckpt={ckpts['soft']}", "prompts=3", "max_new_tokens=4", "max_drop=0.0"]) == 0
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    values = [float(v) for v in line.removeprefix("thresholds=[").removesuffix("]").split(",")]
    shared = set(values) - {1.0}  # 1.0: an exit whose head does not pay is not tried
    assert len(values) == 3 and len(shared) <= 1 and shared <= set(GRID)
    table = [[c.strip() for c in line.split("|")[1:-1]] for line in err.splitlines() if line.startswith("|")]
    assert table[0] == ["threshold", "exact_match", "(full)", "= full output", "mean exit", "exits tried"]
    tried = table[2:]  # under the header and its rule
    assert 1 <= len(tried) <= len(GRID) and float(tried[0][0]) == GRID[0]


@pytest.mark.parametrize(("argv", "message"), [(["prompts=3"], "no checkpoint"), (["ckpt=/no/such.ckpt"], "not found")])
def test_calibrate_bad_input(argv, message, capsys):
    assert calibrate.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bench_generate_rows_and_lossless_speculation(ckpts, capsys):
    assert bench.main(["generate", f"ckpt={ckpts['soft']}", "prompts=3", "max_new_tokens=6", "thresholds=[1,1,1]"]) == 0
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()]
    by_mode = {r[0]: r for r in rows if r and r[0] not in ("mode", "---")}
    assert set(by_mode) == {
        "full (exit 8)", "exit 2", "exit 4", "exit 6", "speculative draft 2", "speculative draft 4",
        "speculative draft 6", "HF assistant_early_exit=2", "HF assistant_early_exit=4", "HF assistant_early_exit=6",
        "dynamic [1.0, 1.0, 1.0]",
    }  # fmt: skip
    for mode, row in by_mode.items():  # the lossless modes reproduce the full model's output on every prompt
        if mode.startswith(("speculative", "HF", "dynamic", "full")):
            assert row[-1] == "1.00", mode


def test_bench_generate_batch_sweep(ckpts, capsys):
    assert bench.main(["generate", f"ckpt={ckpts['soft']}", "prompts=3", "max_new_tokens=6", "thresholds=[1,1,1]",
                       "draft_exits=[2]", "batch_size=[1,3]"]) == 0  # fmt: skip
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in capsys.readouterr().out.splitlines()]
    table = [r for r in rows if r and r[0].isdigit()]
    modes = ["HF generate", "plain (exit 8)", "speculative draft 2", "dynamic [1.0, 1.0, 1.0]"]
    assert [(r[0], r[1]) for r in table] == [(b, m) for b in ("1", "3") for m in modes]
    for batch, mode, _, speedup, _, same in table:
        if mode != "HF generate":  # ours is lossless at every batch size (HF's left padding may round otherwise)
            assert same == "1.00", (batch, mode)
        assert mode != "plain (exit 8)" or speedup == "1.00x"
    for row in table:  # speculation's detail: the acceptance and the share decoded with drafting off
        assert not row[1].startswith("speculative") or re.fullmatch(r"acceptance [01]\.\d\d, \d+% plain", row[4])


def test_bench_generate_on_an_alpaca_file_scores_rouge_l_against_its_outputs(ckpts, tmp_path, capsys):
    from sortednet.metrics import rouge_l

    rows = [{"instruction": f"Say {word}.", "input": "", "output": f"{word} it is"} for word in "abcdef"]
    data = tmp_path / "heldout.json"
    data.write_text(__import__("json").dumps(rows))
    assert bench.main(["generate", f"ckpt={ckpts['soft']}", "prompts=3", "max_new_tokens=6", "draft_exits=[4]",
                       "max_drop=0.0", f"data={data}"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "3 prompts of " + str(data) in out and "| rouge l |" in out
    by_mode = {r[0]: r for r in ([c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()) if r}
    full = float(by_mode["full (exit 8)"][-2])
    assert 0.0 <= full <= 1.0
    # A lossless mode gives the full model's answers, so the same ROUGE-L.
    assert by_mode["speculative draft 4"][-2] == by_mode["full (exit 8)"][-2]
    texts = ["a it is", "b it is", "c it is"]  # had the full model answered perfectly, ROUGE-L would be 1
    assert sum(rouge_l(texts, [r["output"] for r in rows[:3]])) / 3 == 1.0
    assert any(mode.startswith("dynamic") for mode in by_mode)


def test_bench_generate_needs_twice_prompts_rows_of_data(ckpts, tmp_path, capsys):
    data = tmp_path / "two.json"
    data.write_text('[{"instruction": "x", "input": "", "output": "y"}, {"instruction": "z", "output": "w"}]')
    assert bench.main(["generate", f"ckpt={ckpts['soft']}", "prompts=3", f"data={data}"]) == 2
    err = capsys.readouterr().err
    assert "has 2 rows; prompts=3 needs 6" in err and len(err.strip().splitlines()) == 1
