"""Inference from a checkpoint alone: `python -m sortednet.export`, `python -m sortednet.generate`, `load_sorted`,
and their one-line errors (the `key=value` parser itself: test_commands)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import main_in_process, one_line_error, run_main, save_tiny
from sortednet import export, generate
from sortednet.eval.exits import greedy_answers
from sortednet.inference import latency
from sortednet.inference.load import load_sorted
from sortednet.inference.stream import TextStream
from sortednet.prompts import ALPACA

PROMPT = "What color is the apple?"
N = 12  # new tokens per answer: the random model rarely stops early, so answers are N tokens long


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"sortednet.{module}", *args], capture_output=True, text=True, timeout=120
    )


def _prompt_ids(tokenizer, instruction: str, text: str = "") -> list[int]:
    return tokenizer(ALPACA.format(instruction, text))["input_ids"]


# ---------------------------------------------------------------- loading


def test_load_sorted_rebuilds_the_model_and_its_heads(ckpts):
    checkpoint = torch.load(ckpts["ict"], map_location="cpu", weights_only=True)
    net, tokenizer, meta = load_sorted(str(ckpts["ict"]))
    assert not net.training and meta.prompt_style == "alpaca" and meta.exit_heads == [2, 4, 6]
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, checkpoint["state_dict"][f"net.{key}"], rtol=0, atol=0)
    assert net.head(2) is not net.lm_head and net.head(8) is net.lm_head
    assert tokenizer.eos_token == "</s>"


# ---------------------------------------------------------------- export


@pytest.mark.parametrize(("name", "exit_"), [("soft", 4), ("ict", 2), ("tied", 2), ("tied", 4)])
def test_export_is_a_plain_hf_model_with_exit_k_logits(ckpts, tmp_path, capsys, name, exit_):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    code, stdout, err = run_main(export.main, [f"ckpt={ckpts[name]}", f"exit={exit_}", f"out={out}"], capsys)
    assert code == 0, err
    assert str(out) in stdout
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and not [f for f in files if f.endswith((".bin", ".pt"))]
    assert {"tokenizer.json", "tokenizer_config.json", "prompt_style.json", "config.json"} <= files
    assert json.loads((out / "prompt_style.json").read_text())["without_input"] == ALPACA.without_input
    entry = json.loads((out / "config.json").read_text())["sortednet"]
    assert entry["exit"] == exit_ and entry["source"] == str(ckpts[name]) and entry["prompt_style"] == "alpaca"
    assert not list(tmp_path.glob(".out.*"))  # no temporary directory left behind

    lm = AutoModelForCausalLM.from_pretrained(out)  # vanilla transformers, no sortednet code
    assert lm.config.num_hidden_layers == exit_ and len(lm.model.layers) == exit_
    net, tokenizer, _ = load_sorted(str(ckpts[name]))
    assert AutoTokenizer.from_pretrained(out)(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]
    ids = torch.tensor([_prompt_ids(tokenizer, PROMPT)[-20:], _prompt_ids(tokenizer, "Repeat the words.", "a b")[-20:]])
    with torch.no_grad():
        expected = net.exit_logits(ids, None, [exit_])[exit_]
        torch.testing.assert_close(lm(input_ids=ids).logits, expected, rtol=0, atol=1e-5)


def test_export_refuses_to_overwrite_and_checks_its_input(ckpts, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_main(export.main, [f"ckpt={ckpts['soft']}", "exit=4", f"out={out}"], capsys)
    one_line_error(code, err, "non-empty directory")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    fresh = str(tmp_path / "fresh")
    for argv, message in [
        ([f"ckpt={ckpts['soft']}", "exit=9", f"out={fresh}"], "outside [1, 8]"),
        ([f"ckpt={ckpts['soft']}", "exit=0", f"out={fresh}"], "outside [1, 8]"),
        ([f"ckpt={ckpts['soft']}", "exit=four", f"out={fresh}"], "exit='four' is not a valid int"),
        ([f"ckpt={tmp_path / 'no.ckpt'}", "exit=4", f"out={fresh}"], "not found"),
        ([f"ckpt={ckpts['soft']}", "exit=4", f"out={fresh}", "dtype=int8"], "unknown dtype"),
    ]:
        one_line_error(*run_main(export.main, argv, capsys)[::2], message)
    assert not Path(fresh).exists()


def test_export_bfloat16_and_generate_from_the_export(ckpts, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bf16"
    assert run_main(export.main, [f"ckpt={ckpts['soft']}", "exit=4", f"out={out}", "dtype=bfloat16"], capsys)[0] == 0
    assert AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype == torch.bfloat16
    exported = tmp_path / "fp32"
    assert run_main(export.main, [f"ckpt={ckpts['soft']}", "exit=4", f"out={exported}"], capsys)[0] == 0
    args = [f"prompt={PROMPT}", f"max_new_tokens={N}", "device=cpu"]
    from_export = run_main(generate.main, [f"ckpt={exported}", *args], capsys)
    from_ckpt = run_main(generate.main, [f"ckpt={ckpts['soft']}", "exit=4", *args], capsys)
    assert from_export[0] == 0 and from_export[1] == from_ckpt[1] and from_export[1].strip()


# ---------------------------------------------------------------- generate


def test_generate_streams_exactly_the_greedy_answer(ckpts):
    """The real CLI in its own process: stdout is the answer alone, stderr the timing."""
    process = _cli("generate", f"ckpt={ckpts['soft']}", "exit=4", f"prompt={PROMPT}", f"max_new_tokens={N}")
    assert process.returncode == 0, process.stderr
    net, tokenizer, _ = load_sorted(str(ckpts["soft"]))
    (answer,) = greedy_answers(net, tokenizer, [_prompt_ids(tokenizer, PROMPT)], 4, N)
    assert answer.strip() and process.stdout == answer + "\n"
    assert "tokens/s" in process.stderr and "Traceback" not in process.stderr


def test_sampling_is_reproducible_with_a_seed(ckpts, capsys):
    args = [f"ckpt={ckpts['soft']}", "exit=2", f"prompt={PROMPT}", f"max_new_tokens={N}", "do_sample=true"]
    args += ["temperature=0.9", "top_p=0.95", "device=cpu"]
    first = run_main(generate.main, [*args, "seed=3"], capsys)
    again = run_main(generate.main, [*args, "seed=3"], capsys)
    other = run_main(generate.main, [*args, "seed=4"], capsys)
    assert first[0] == 0 and first[1] == again[1] and first[1] != other[1]


def test_batches_give_the_answers_of_single_prompts(ckpts, tmp_path, capsys):
    rows = [
        {"instruction": PROMPT},
        {"instruction": "Repeat the words exactly.", "input": "apple river stone"},
        {"instruction": "How many words are in the input?", "input": "apple apple"},
    ]
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    args = [f"ckpt={ckpts['soft']}", "exit=6", f"prompts={jsonl}", f"max_new_tokens={N}", "device=cpu"]
    single = run_main(generate.main, [*args, "batch_size=1"], capsys)
    batched = run_main(generate.main, [*args, "batch_size=2"], capsys)
    assert single[0] == 0 and batched[0] == 0, single[2] + batched[2]
    net, tokenizer, _ = load_sorted(str(ckpts["soft"]))
    prompts = [_prompt_ids(tokenizer, r["instruction"], r.get("input", "")) for r in rows]
    answers = greedy_answers(net, tokenizer, prompts, 6, N, batch_size=1)
    assert single[1] == batched[1] == "\n".join(a + "\n" for a in answers)
    assert "[3/3]" in single[2] and "batch of 2" in batched[2] and "total (3 prompts)" in batched[2]

    txt = tmp_path / "prompts.txt"
    txt.write_text(f"{PROMPT}\n\n{PROMPT}\n")  # the blank line is skipped
    code, out, _ = run_main(
        generate.main, [f"ckpt={ckpts['soft']}", "exit=6", f"prompts={txt}", f"max_new_tokens={N}"], capsys
    )
    assert code == 0 and out == "\n".join([answers[0] + "\n"] * 2)


def test_exit_auto_picks_the_deepest_exit_within_the_budget(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(latency, "PROFILE_WARMUP", 1)  # 16 timed tokens per exit still, fewer repeats
    monkeypatch.setattr(latency, "PROFILE_REPEATS", 1)
    ckpt = tmp_path / "auto.ckpt"
    ckpt.write_bytes(ckpts["soft"].read_bytes())
    args = [f"ckpt={ckpt}", "exit=auto", f"prompt={PROMPT}", "max_new_tokens=4", "device=cpu"]
    code, _, err = run_main(generate.main, [*args, "latency_ms_per_token=1e9"], capsys)
    assert code == 0, err
    profile_file = Path(f"{ckpt}.latency.json")
    (entry,) = json.loads(profile_file.read_text()).values()
    assert entry["threads"] == torch.get_num_threads() and entry["tokens"] == 16
    profile = {int(e): ms for e, ms in entry["ms_per_token"].items()}
    assert sorted(profile) == [2, 4, 6, 8] and all(ms > 0 for ms in profile.values())
    assert "exit=auto: exit 8" in err and "measured" in err

    budget = sorted(profile.values())[1]  # the second-fastest exit's latency: at least two exits fit
    expected = max(e for e, ms in profile.items() if ms <= budget)
    code, out, err = run_main(generate.main, [*args, f"latency_ms_per_token={budget}"], capsys)
    assert code == 0 and f"exit=auto: exit {expected} " in err and "cached" in err
    assert out == run_main(generate.main, [*args[:1], f"exit={expected}", *args[2:]], capsys)[1]

    code, _, err = run_main(generate.main, [*args, "latency_ms_per_token=1e-9"], capsys)
    fastest = min(profile, key=profile.get)
    assert code == 2 and err.strip().splitlines()[-1].startswith("sortednet: error: no exit fits")
    assert f"the fastest, exit {fastest}, takes {profile[fastest]:.3f} ms per token" in err


def test_speculative_and_dynamic_modes_print_the_full_models_text(ckpts, tmp_path, capsys):
    """The lossless modes, streamed (batch_size=1) and batched, print what full-model greedy prints."""
    jsonl = tmp_path / "prompts.jsonl"
    rows = [{"instruction": PROMPT}, {"instruction": "Repeat the words exactly.", "input": "apple river stone"},
            {"instruction": "How many words are in the input?", "input": "apple apple"}]  # fmt: skip
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    common = [f"ckpt={ckpts['soft']}", f"prompts={jsonl}", f"max_new_tokens={N}", "device=cpu"]
    code, full, err = run_main(generate.main, [*common, "exit=8"], capsys)
    assert code == 0, err
    modes = {"speculative": ("draft_exit=2", "acceptance="), "dynamic": ("thresholds=[1,1,1]", "mean_exit=8")}
    for mode, (setting, stat) in modes.items():
        for batch, label in (("batch_size=1", "[3/3]"), ("batch_size=3", f"[1-3/3] {mode}, batch of 3")):
            code, out, err = run_main(generate.main, [*common, f"mode={mode}", setting, batch], capsys)
            assert code == 0 and out == full, err
            assert label in err and stat in err and "total (3 prompts)" in err


def test_streaming_prints_multibyte_text_once_complete(tokenizer):
    text = "héllo wörld ✓ 13 + 4 = 17"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = io.StringIO()
    stream = TextStream(tokenizer, out)
    seen = []
    for token in ids:
        stream.push(token)
        seen.append(out.getvalue())
    assert stream.finish() == text and out.getvalue() == text
    assert all("\ufffd" not in s for s in seen) and all(text.startswith(s) for s in seen)


BAD_GENERATE = [
    (["exit=9"], "exit=9 is outside [1, 8]"),
    (["exit=0"], "exit=0 is outside [1, 8]"),
    (["exit=deep"], "neither a layer count nor auto"),
    (["mode=speculative", "draft_exit=8"], "draft_exit=8 must be in [1, 7]"),
    (["mode=speculative", "draft_exit=0"], "draft_exit=0 must be in [1, 7]"),
    (["mode=speculative"], "needs a draft exit"),
    (["mode=dynamic", "thresholds=[0.9,0.9]"], "expected 3: one per exit [2, 4, 6]"),
    (["mode=dynamic", "thresholds=[0.9,1.5,0.9]"], "outside (0, 1]"),
    (["mode=dynamic", "thresholds=[0.9,0,0.9]"], "outside (0, 1]"),
    (["mode=dynamic"], "mode=dynamic needs thresholds=[...]: 3 values"),
    (["mode=dynamic", "thresholds=[1,1,1]", "exit=4"], "drop exit=4"),
    (["mode=speculative", "draft_exit=2", "exit=6"], "verifies with the full model (exit 8)"),
    (["mode=fast"], "unknown mode='fast'"),
    (["prompt=  "], "the prompt is empty"),
    (["prompt=" + "word " * 300], "exceeds the model's max_position_embeddings=256"),
    (["prompt=hi", "max_new_tokens=250"], "exceeds the model's max_position_embeddings=256"),
    (["exit=auto"], "latency_ms_per_token"),
    (["latency_ms_per_token=5"], "for exit=auto"),
    (["thresholds=[0.5]"], "for mode=dynamic"),
    (["max_new_tokens=lots"], "max_new_tokens='lots' is not a valid int"),
    (["do_sample=maybe"], "not a valid bool"),
    (["no_such_key=1"], "unknown key 'no_such_key'; valid keys: ckpt, exit, prompt"),
    (["top_p=0"], "top_p=0.0 must be in (0, 1]"),
    (["prompts=/no/such.txt"], "prompts file '/no/such.txt' not found"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_GENERATE, ids=[" ".join(b[0])[:40] for b in BAD_GENERATE])
def test_bad_generate_input_is_one_line(ckpts, capsys, extra, message):
    keys = {a.split("=", 1)[0] for a in extra}
    base = [f"ckpt={ckpts['soft']}", "device=cpu"] + ([] if keys & {"prompt", "prompts"} else [f"prompt={PROMPT}"])
    one_line_error(*run_main(generate.main, base + extra, capsys)[::2], message)


def test_bad_input_without_a_model(ckpts, tmp_path, capsys):
    bad_rows = tmp_path / "rows.json"
    bad_rows.write_text(json.dumps([{"instruction": "ok"}, {"instruction": ""}]))
    not_sorted = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, not_sorted)
    plain_dir = save_tiny("llama", tmp_path / "plain")
    for argv, message in [
        ([f"ckpt={ckpts['soft']}"], "no prompt given"),
        (["prompt=hi"], "no checkpoint given"),
        ([f"ckpt={ckpts['soft']}", "prompt=hi", f"prompts={bad_rows}"], "not both"),
        ([f"ckpt={ckpts['soft']}", f"prompts={bad_rows}"], "row 1 of"),
        ([f"ckpt={not_sorted}", "prompt=hi"], "has no sortednet metadata"),
        ([f"ckpt={plain_dir}", "prompt=hi"], "without a sortednet entry"),
        ([f"ckpt={tmp_path / 'missing.ckpt'}", "prompt=hi"], "not found"),
        ([f"ckpt={ckpts['soft']}", "prompt=hi", "exit"], "is not key=value"),
        ([f"ckpt={ckpts['soft']}", "prompt=hi", "exit=2", "exit=4"], "given twice"),
    ]:
        one_line_error(*run_main(generate.main, argv, capsys)[::2], message)


def test_the_real_commands_fail_in_one_line_with_status_2(ckpts, tmp_path, capsys):
    """Through each module's ``__main__`` block: the status is what the interpreter exits with."""
    for module, args, message in [
        ("generate", [f"ckpt={ckpts['soft']}", "exit=99", "prompt=hi"], "outside [1, 8]"),
        ("export", [f"ckpt={tmp_path / 'nope.ckpt'}", "exit=2", f"out={tmp_path / 'x'}"], "not found"),
    ]:
        code, out, err = main_in_process(f"sortednet.{module}", args, capsys)
        one_line_error(code, err, message)
        assert out == ""
