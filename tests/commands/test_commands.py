"""One way to write a command: every command takes ``key=value`` over a typed config, parsed by OmegaConf
(``sortednet.cli``), and behaves alike for ``--help``, unknown keys and wrong types."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import pytest

from conftest import one_line_error, train_in_process
from sortednet import bench, calibrate, cli, consolidate, evaluate, export, generate, plan
from sortednet.config import TrainConfig
from sortednet.errors import SortedNetError

# command, the arguments before the keys, its config, (an unknown key, the key it suggests), (a value of the wrong
# type, its key, the type named). consolidate's keys are all text: any value is a valid one.
COMMANDS = [
    ("generate", generate.main, [], generate.GenerateConfig, ("promt=hi", "prompt"),
     ("max_new_tokens=lots", "max_new_tokens", "int")),
    ("export", export.main, [], export.ExportConfig, ("ot=DIR", "out"), ("exit=four", "exit", "int")),
    ("evaluate", evaluate.main, [], evaluate.EvaluateConfig, ("limt=3", "limit"),
     ("batch_size=big", "batch_size", "int")),
    ("calibrate", calibrate.main, [], calibrate.CalibrateConfig, ("max_dorp=0.1", "max_drop"),
     ("max_drop=some", "max_drop", "float")),
    ("consolidate", consolidate.main, [], consolidate.ConsolidateConfig, ("dtyp=bfloat16", "dtype"), None),
    ("plan", plan.main, [], plan.PlanArgs, ("plan.mfuu=0.5", "plan.mfu"), ("plan.mfu=fast", "plan.mfu", "float")),
    ("plan (training keys)", plan.main, [], TrainConfig, ("data.batch_sise=4", "data.batch_size"),
     ("data.batch_size=big", "data.batch_size", "int")),
    ("bench train", bench.main, ["train"], bench.BenchTrainConfig, ("seqq=32", "seq"), ("steps=many", "steps", "int")),
    ("bench generate", bench.main, ["generate"], bench.BenchGenerateConfig, ("max_new_token=4", "max_new_tokens"),
     ("batch_size=4", "batch_size", "list of int")),
]  # fmt: skip
IDS = [c[0] for c in COMMANDS]


def _check_help(out: str, config_type: type) -> None:
    """Every key of ``config_type`` is listed with its type and default, and its docstring (which it must have)."""
    for key in cli.config_keys(config_type).values():
        assert f"  {key.name}=<{key.type_text}>  (default: " in out, key.name
        assert key.doc, f"{config_type.__name__}.{key.name} has no docstring"
        assert all(f"      {line}" in out for line in key.doc.splitlines()), key.name


@pytest.mark.parametrize(("name", "main", "head", "config_type", "unknown", "wrong"), COMMANDS, ids=IDS)
def test_help_lists_every_key_with_its_docstring(name, main, head, config_type, unknown, wrong, capsys):
    for flag in ("--help", "-h"):
        assert main([*head, flag]) == 0
        out, err = capsys.readouterr()
        assert err == "" and out.splitlines()[0].startswith("`python -m sortednet.")
        _check_help(out, config_type)


@pytest.mark.parametrize(("name", "main", "head", "config_type", "unknown", "wrong"), COMMANDS, ids=IDS)
def test_an_unknown_key_is_one_line_with_a_suggestion(name, main, head, config_type, unknown, wrong, capsys):
    arg, suggestion = unknown
    key = arg.partition("=")[0]
    one_line_error(main([*head, arg]), capsys.readouterr().err, f"'{key}'", f"did you mean {suggestion}")


@pytest.mark.parametrize(("name", "main", "head", "config_type", "unknown", "wrong"), COMMANDS, ids=IDS)
def test_a_wrong_type_is_one_line_naming_the_key_and_its_type(name, main, head, config_type, unknown, wrong, capsys):
    if wrong is None:  # every key of this command is text
        assert all(k.type_text in ("str", "str | null") for k in cli.config_keys(config_type).values())
        return
    arg, key, type_name = wrong
    value = arg.partition("=")[2]
    message = f"{key}='{value}' is not a valid {type_name}"
    one_line_error(main([*head, arg]), capsys.readouterr().err, message, "give e.g. ")


TWICE = [(generate.main, [], "ckpt"), (export.main, [], "ckpt"), (evaluate.main, [], "ckpt"),
         (calibrate.main, [], "ckpt"), (consolidate.main, [], "ckpt"), (plan.main, [], "plan.mfu"),
         (bench.main, ["train"], "device"), (bench.main, ["generate"], "ckpt")]  # fmt: skip


@pytest.mark.parametrize(("main", "head", "key"), TWICE, ids=[" ".join([m.__module__, *h]) for m, h, _ in TWICE])
def test_a_key_twice_or_without_a_value_is_one_line(main, head, key, capsys):
    one_line_error(main([*head, f"{key}=0.5", f"{key}=0.5"]), capsys.readouterr().err, f"{key} is given twice")
    one_line_error(main([*head, key]), capsys.readouterr().err, f"'{key}' is not key=value")


def test_train_help_lists_every_key_with_its_docstring(capsys):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code, _ = train_in_process(["--help"], capsys)
    assert code == 0
    assert "== Configuration groups ==" in out.getvalue() and "experiment: " in out.getvalue()
    _check_help(out.getvalue(), TrainConfig)


TRAIN_REFUSALS = [
    (["trainer.max_epoch=1"], ("'trainer.max_epoch'", "did you mean trainer.max_epochs", "sortednet.train --help")),
    (["-m", "exits=[4,8],[2,4]", "data.batch_sise=4"], ("'data.batch_sise'", "did you mean data.batch_size")),
    (["data.batch_size=big"], ("data.batch_size='big' is not a valid int", "give e.g. data.batch_size=")),
    (["objective=sfft"], ("Could not find 'objective/sfft'", "extracted ict sft soft")),
    (["exits=[4"], ("no viable alternative at input '[4'", "write overrides as key=value")),
]


@pytest.mark.parametrize(("argv", "words"), TRAIN_REFUSALS, ids=[" ".join(a) for a, _ in TRAIN_REFUSALS])
def test_train_refuses_what_hydra_cannot_compose_in_one_line_before_writing(argv, words, tmp_path, monkeypatch, capsys):
    """The same unknown-key, wrong-type and unknown-option messages as every other command (Hydra's own are
    several lines, status 1), also for a sweep, and before any run or sweep directory exists."""
    monkeypatch.chdir(tmp_path)
    code, err = train_in_process(argv, capsys)
    one_line_error(code, err, *words)
    assert not list(tmp_path.iterdir())


def test_bench_without_a_command_is_one_line(capsys):
    one_line_error(bench.main([]), capsys.readouterr().err, "no command given", "train|generate")
    one_line_error(bench.main(["trian"]), capsys.readouterr().err, "unknown command 'trian'", "did you mean train")
    assert bench.main(["--help"]) == 0 and "bench train --help" in capsys.readouterr().out


# ---------------------------------------------------------------- the parser


@dataclass
class _Group:
    """A group of keys."""

    rate: float = 0.5
    """A rate."""


@dataclass
class _Settings:
    n: int = 1
    """A count."""
    flag: bool = False
    """A switch."""
    name: str = "x"
    """Text."""
    pick: int | str | None = None
    """A layer count or a word."""
    values: list[float] | None = None
    """Numbers."""
    group: _Group = field(default_factory=_Group)
    """The group."""


def test_values_are_read_by_their_declared_type():
    s = cli.parse(["n=3", "group.rate=1e-3", "flag=true", "pick=auto", "values=[0.9, 0.8,1]"], _Settings)
    assert s == _Settings(3, True, "x", "auto", [0.9, 0.8, 1.0], _Group(1e-3))
    assert cli.parse(["pick=7", "values=[]"], _Settings) == _Settings(pick=7, values=[])
    assert cli.parse(["pick=null", "flag=no", "values=null"], _Settings) == _Settings()


@pytest.mark.parametrize(
    "text",
    ["Answer: yes, no [x]=1", "[1,2]", "true", "4", "null", "a: b", "${oc.env:HOME}", "\\${x}", "  spaced  ", ""],
)
def test_text_values_stay_verbatim(text):
    assert cli.parse([f"name={text}"], _Settings).name == text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nn=3"], "unknown key 'nn'; did you mean n? valid keys: n, flag, name, pick, values, group.rate"),
        (["zzz=3"], "unknown key 'zzz'; valid keys: n, flag"),
        (["group.rat=3"], "unknown key 'group.rat'; did you mean group.rate?"),
        (["group=3"], "group is a group of keys; set one of them: group.rate"),
        (["n=3.5"], "n='3.5' is not a valid int; give e.g. n=4"),
        (["group.rate=fast"], "group.rate='fast' is not a valid float; give e.g. group.rate=0.5"),
        (["flag=maybe"], "flag='maybe' is not a valid bool"),
        (["pick=4.5"], "pick='4.5' is not a valid int | str | null"),
        (["values=0.9"], "values='0.9' is not a valid list of float | null; give e.g. values=[0.5,0.9]"),
        (["values=[0.9,x]"], "is not a valid list of float"),
        (["values=[0.9,"], "is not a valid list of float"),
        (["n"], "argument 'n' is not key=value"),
        (["=3"], "is not key=value"),
        (["n=1", "n=2"], "n is given twice"),
    ],
)
def test_bad_arguments_are_errors_that_say_what_to_type(argv, message):
    with pytest.raises(SortedNetError) as error:
        cli.parse(argv, _Settings)
    assert message in str(error.value)


def test_field_docs_are_read_from_the_source():
    assert cli.field_docs(_Settings) == {
        "n": "A count.", "flag": "A switch.", "name": "Text.", "pick": "A layer count or a word.",
        "values": "Numbers.", "group": "The group.",
    }  # fmt: skip
    assert cli.groups(_Settings) == {"group": "The group."}


def test_train_leaves_a_users_config_directories_to_hydra(tmp_path):
    """An option from the user's own config directory (``hydra.searchpath`` or ``--config-dir``) is not refused
    up front: only Hydra, which searches there, knows it."""
    from sortednet.training.composition import check_command_line

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("name_or_path: embedded\n")
    with pytest.raises(SortedNetError, match="Could not find 'model/mine'"):
        check_command_line(["model=mine"])
    check_command_line([f"hydra.searchpath=[file://{tmp_path}]", "model=mine"])
    check_command_line(["--config-dir", str(tmp_path), "model=mine"])
