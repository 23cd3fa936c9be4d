"""Every bad input of every command is one line, `sortednet: error: …`, exit status 2, and writes nothing.

One table per command, run in-process (the command's ``main`` with argv; stderr captured): the suite stays
fast however many rows the tables grow to.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from conftest import one_line_error, save_checkpoint, sorted_module, train_in_process
from sortednet import calibrate, consolidate, evaluate, export, generate, plan
from sortednet.embedded import make_rows

READ_ONLY = "/sys/sortednet-test/out"  # not writable even by root: sysfs refuses new entries


@pytest.fixture(scope="module")
def files(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """Good and bad inputs, by name: data files, checkpoints, paths under files."""

    root = tmp_path_factory.mktemp("inputs")
    module = sorted_module(cache_dir=cache_dir)
    meta = module.metadata()
    ckpt = save_checkpoint(root / "soft.ckpt", module.state_dict(), meta)
    paths = {"ckpt": ckpt, "data": root / "rows.json", "binary": root / "binary.json", "empty": root / "empty.json"}
    paths["data"].write_text(json.dumps(make_rows(24)))
    paths["binary"].write_bytes(bytes(range(128, 256)) * 4)
    paths["empty"].write_bytes(b"")
    paths["malformed"] = root / "malformed.json"
    paths["malformed"].write_text('[{"instruction": "x", "output": "y"},\n {"instruction": }]')
    paths["binary_txt"] = root / "binary.txt"
    paths["binary_txt"].write_bytes(bytes(range(128, 256)))
    for name in ("unreadable.json", "unreadable.txt"):  # a regular file whose read fails (EIO), even for root
        (root / name).symlink_to("/proc/self/mem")
        paths[name.replace(".", "_")] = root / name
    paths["truncated"] = root / "truncated.ckpt"
    paths["truncated"].write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    paths["random"] = root / "random.ckpt"
    paths["random"].write_bytes(os.urandom(4096))
    paths["extracted"] = save_checkpoint(root / "extracted.ckpt", {}, dataclasses.replace(meta, objective="extracted"))
    other = dataclasses.replace(meta, num_layers=4, hf_config={**meta.hf_config, "hidden_size": 48})
    paths["other_model"] = save_checkpoint(root / "other.ckpt", {}, other)
    paths["broken_model"] = root / "broken-model"
    paths["broken_model"].mkdir()
    (paths["broken_model"] / "config.json").write_text('{"model_type": "llama",')
    paths["file"] = root / "a-file"
    paths["file"].write_text("not a directory")
    return paths


def _fill(argv: list[str], files: dict[str, Path]) -> list[str]:
    for name, path in sorted(files.items(), key=lambda item: -len(item[0])):
        argv = [a.replace(f"<{name}>", str(path)) for a in argv]
    return argv


TRAIN = [
    (["data.path=<binary>"], "is not UTF-8 text"),
    (["data.path=<unreadable_json>"], "cannot read data file"),
    (["data.path=<empty>"], "is empty"),
    (["data.path=<malformed>"], "malformed JSON"),
    (["trainer.max_steps=-5"], "trainer.max_steps=-5"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc'"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0"),
    (["trainer.devices=0"], "trainer.devices=0"),
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.batch_size=-3"], "data.batch_size=-3"),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0"),
    (["optimizer.lr=-1"], "optimizer.lr=-1"),
    (["warmup_steps=-10"], "warmup_steps=-10"),
    (["min_lr_ratio=2"], "min_lr_ratio=2"),
    (["eval.num_generate=-1"], "eval.num_generate=-1"),
    (["ckpt_path=<truncated>"], "not a readable checkpoint"),
    (["ckpt_path=<random>"], "not a readable checkpoint"),
    (["ckpt_path=<data>"], "not a readable checkpoint"),
    (["ckpt_path=<extracted>"], "trained with objective=extracted"),
    (["ckpt_path=<other_model>"], "holds a model of 4 layers of width 48"),
    (["ckpt_path=/no/such.ckpt"], "not found"),
    (["ckpt_path=<cache>"], "not a distributed checkpoint"),
    (["model.name_or_path=/no/such/model"], "does not exist"),
    (["model.name_or_path=<broken_model>"], "config.json' is not valid JSON"),
    (["experiment=soft_13b"], "model.name_or_path=/path/to/Llama-2-13b-hf"),
    (["exits=[2,4,9]"], "outside [1, 8]"),
    (["exits=[4,2,8]"], "not sorted"),
    (["exits=[2,4]"], "do not contain the last layer 8"),
    (["objective=ict"], "objective.init_from"),
    (["loss=distill", "objective=sft"], "loss.distill teaches the exits of one shared head"),
    (["loss=distill", "exits=[2,8]", "objective=extracted"], "loss.distill teaches the exits of one shared head"),
    (["loss=distill", "exits=[8]"], "loss.distill teaches the exits below the deepest"),
    (["loss.distill=1.5"], "loss.distill=1.5"),
    (["data.max_length=8"], "raise data.max_length"),
    (["strategy=fsdp"], "strategy=fsdp shards the model"),
    ([f"hydra.run.dir={READ_ONLY}"], "cannot create hydra.run.dir"),
    (["hydra.run.dir=<file>/run"], "cannot create hydra.run.dir"),
    (["hydra.run.dir=<file>"], "is a file"),
]


@pytest.mark.parametrize(("overrides", "message"), TRAIN, ids=[" ".join(o) for o, _ in TRAIN])
def test_bad_train_input_is_refused_before_anything_is_written(tmp_path, files, cache_dir, capsys, overrides, message):
    run_dir = tmp_path / "run"
    base = [f"hydra.run.dir={run_dir}", "data.path=<data>", "logger=csv", "eval.num_generate=0", "data.val_size=8"]
    code, err = train_in_process(_fill([*base, *overrides], {**files, "cache": cache_dir}), capsys)
    one_line_error(code, err, message, alone=False)
    written = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    assert written == []  # no .hydra/, csv/, wandb/ or checkpoints/ of a refused run


def test_a_run_directory_that_holds_a_run_is_refused_and_kept(tmp_path, files, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"the earlier run's checkpoint")
    code, err = train_in_process([f"hydra.run.dir={run_dir}", f"data.path={files['data']}", "logger=csv"], capsys)
    one_line_error(code, err, "already holds a run", alone=False)
    assert sorted(p.name for p in run_dir.rglob("*")) == ["checkpoints", "last.ckpt"]
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == b"the earlier run's checkpoint"


def test_an_unknown_training_key_is_one_line_before_the_run_directory(tmp_path, capsys):
    code, err = train_in_process([f"hydra.run.dir={tmp_path / 'run'}", "no_such_key=1"], capsys)
    one_line_error(code, err, "'no_such_key': not a training setting", alone=False)
    assert not (tmp_path / "run").exists()


INFERENCE = [
    (generate, ["ckpt=<ckpt>", "prompts=<binary_txt>"], "is not UTF-8 text"),
    (generate, ["ckpt=<ckpt>", "prompts=<unreadable_txt>"], "cannot read prompts file"),
    (generate, ["ckpt=<ckpt>", "prompts=<empty>"], "is empty"),
    (export, ["ckpt=<ckpt>", "exit=4", "out=<file>"], "is a file"),
    (export, ["ckpt=<ckpt>", "exit=4", "out=<file>/sub"], "lies under the file"),
    (export, ["ckpt=<ckpt>", "exit=4", f"out={READ_ONLY}"], "out="),
    (consolidate, ["ckpt=<ckpt>", "out=<file>"], "is a file"),
    (consolidate, ["ckpt=<ckpt>", "out=<file>/sub"], "lies under the file"),
    (consolidate, ["ckpt=<ckpt>", f"out={READ_ONLY}"], "out="),
    (evaluate, ["suite=loss", "ckpt=<ckpt>", "out=<file>"], "is a file"),
    (evaluate, ["suite=loss", "ckpt=<ckpt>", "out=<file>/sub"], "lies under the file"),
    (evaluate, ["suite=loss", "ckpt=<ckpt>", "out=<tmp>/eval", "data=<binary>"], "is not UTF-8 text"),
    (evaluate, ["suite=generate", "ckpt=<ckpt>", "out=<tmp>/eval", "instructions=<binary>"], "is not UTF-8 text"),
    (evaluate, ["suite=pandalm", "ckpt=<ckpt>", "out=<tmp>/eval", "judge=/no/such/judge"], "judge='/no/such/judge'"),
    (calibrate, ["ckpt=<ckpt>", "data=<binary>"], "is not UTF-8 text"),
    (calibrate, ["ckpt=<ckpt>", "data=<unreadable_json>"], "cannot read data file"),
    (calibrate, ["ckpt=<ckpt>", "data=/no/such.json"], "not found; pass an existing .json"),
    (plan, ["foo=1"], "Could not override 'foo'"),
    (plan, ["trainer.devices=0"], "trainer.devices=0"),
    (plan, ["plan.mfu=0"], "plan.mfu=0.0 must be in (0, 1]"),
    (plan, ["plan.nope=1"], "unknown key 'plan.nope'"),
]


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    INFERENCE,
    ids=[f"{c.__name__.split('.')[-1]} {' '.join(a)}" for c, a, _ in INFERENCE],
)
def test_bad_input_of_the_other_commands_is_one_line(tmp_path, files, capsys, command, argv, message):
    code = command.main(_fill(argv, {**files, "tmp": tmp_path}))
    one_line_error(code, capsys.readouterr().err, message, alone=False)
    assert not (tmp_path / "eval").exists()  # nothing of a refused evaluation


def test_every_command_has_help(capsys):
    for command in (generate, export, consolidate, evaluate, calibrate, plan):
        assert command.main(["--help"]) == 0
        assert "=<" in capsys.readouterr().out  # the keys, with their types


def test_export_into_an_empty_directory_keeps_its_permissions(tmp_path, files, capsys):
    out = tmp_path / "export"
    out.mkdir(mode=0o750)
    out.chmod(0o750)
    assert export.main([f"ckpt={files['ckpt']}", "exit=4", f"out={out}"]) == 0, capsys.readouterr().err
    assert stat.S_IMODE(out.stat().st_mode) == 0o750 and (out / "config.json").is_file()


def test_a_damaged_checkpoint_is_refused_by_every_reader(files):
    from sortednet.errors import SortedNetError
    from sortednet.training.preflight import read_metadata

    for name in ("truncated", "random", "data"):
        with pytest.raises(SortedNetError, match="not a readable checkpoint"):
            read_metadata(str(files[name]))
    assert read_metadata(str(files["ckpt"])).exits == [2, 4, 6, 8]


def test_bf16_on_a_cpu_without_bf16_arithmetic_is_one_line(tmp_path, files, capsys, monkeypatch):
    monkeypatch.setattr("torch.cpu._is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr("torch.cpu._is_amx_tile_supported", lambda: False)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    run_dir = tmp_path / "run"
    argv = [f"hydra.run.dir={run_dir}", f"data.path={files['data']}", "logger=csv", "trainer.precision=bf16-mixed"]
    code, err = train_in_process(argv, capsys)
    one_line_error(code, err, "use trainer.precision=32-true", alone=False)
    assert not run_dir.exists() or not any(run_dir.iterdir())
