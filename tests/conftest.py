"""Shared fixtures and helpers: tiny models saved with save_pretrained, the embedded assets, checkpoints as training
writes them, and the commands run as a user runs them (a process) or in this process. Tests import the helpers
from here; no test imports another test module."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import runpy
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import absl.logging
import pytest
import torch
import tqdm

from sortednet.embedded import materialise

CONF = Path(__file__).parents[1] / "conf"

# tqdm's monitor thread refreshes slow progress bars (model loading, dataset saving) on its own, possibly after
# the captured stderr a bar was made with is closed.
tqdm.tqdm.monitor_interval = 0
# rouge-score imports absl, whose log handler keeps the stream that stderr was at import (pytest's capture) and
# closes it when logging is reconfigured — as Hydra does in the in-process train runs of test_bad_inputs — which
# killed the whole pytest process. The real stderr is never closed by that handler.
absl.logging.get_absl_handler().python_handler.setStream(sys.__stderr__)

TINY = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One SORTEDNET_CACHE for the session, so the embedded assets are written once."""
    path = tmp_path_factory.mktemp("sortednet-cache")
    os.environ["SORTEDNET_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def embedded_root(cache_dir) -> Path:
    return materialise(cache_dir)


@pytest.fixture(scope="session")
def tokenizer(embedded_root):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_root / "tokenizer")


def save_tiny(model_type: str, path: Path, **overrides) -> Path:
    """A tiny random model of ``model_type`` written with save_pretrained, as a user's checkpoint would be."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **{**TINY, **overrides})).save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=["llama", "mistral", "qwen2"])
def tiny_model_dir(request, tmp_path_factory) -> Path:
    return save_tiny(request.param, tmp_path_factory.mktemp(request.param))


# ChatML, as SmolLM2 and Qwen write it, plus a BOS the template writes itself (as LLaMA-2's template does): the
# chat tests cover a tokenizer that adds that BOS again and one that does not.
CHATML = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_tokenizer(adds_bos: bool):
    """A small byte-level BPE tokenizer with ChatML's special tokens and :data:`CHATML` as its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from sortednet.embedded import make_rows

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        [f"user\n{r['instruction']}\n\n{r['input']} assistant\n{r['output']}" for r in make_rows(500)], trainer
    )
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", unk_token="<unk>", chat_template=CHATML
    )


TIMEOUT_S = 900  # generous: CI machines and this one are often shared; a hang still ends


def cli_env(cwd: Path, env: dict | None = None) -> dict:
    """The environment of a command run in ``cwd``: HOME there too, so no W&B credentials or settings leak in."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    environment.update(HOME=str(cwd), WANDB_SILENT="true", **(env or {}))
    return environment


def run_process(command: list[str], cwd: Path, env: dict | None = None, timeout: float = TIMEOUT_S):
    """Run ``command`` in ``cwd``; return the completed process. The command and every process it starts (the
    ranks of a training run) share a new process group, killed as a whole when the command ends or outlives
    ``timeout`` (a stuck rank must not hang the suite)."""
    process = subprocess.Popen(
        command, cwd=cwd, env=cli_env(cwd, env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[:4]} ran past {timeout} s and was killed; stderr ends: {stderr[-2000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # ranks left behind by a command that died
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_module(module: str, *args: str, cwd: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python -m module args`` in ``cwd``, as :func:`run_process` runs it."""
    return run_process([sys.executable, "-m", module, *args], cwd, timeout=timeout)


# ---------------------------------------------------------------- the training command


def cli_command(tmp_path: Path, run: str, *overrides: str, multirun: bool = False) -> list[str]:
    """``python -m sortednet.train`` writing its run (or sweep) into ``tmp_path / run``."""
    args = [sys.executable, "-m", "sortednet.train", *(["-m"] if multirun else [])]
    return [*args, f"hydra.run.dir={tmp_path / run}", f"hydra.sweep.dir={tmp_path / run}", *overrides]


def run_cli(tmp_path: Path, run: str, *overrides: str, env: dict | None = None, multirun: bool = False):
    """The training command in its own process (as :func:`run_process` runs it), in ``tmp_path``."""
    return run_process(cli_command(tmp_path, run, *overrides, multirun=multirun), tmp_path, env)


def _loggers() -> list[logging.Logger]:
    return [x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger)]


def main_in_process(module: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """``python -m MODULE ARGV`` in this process, through the module's own ``__main__`` block: its exit status
    (what ``sys.exit`` was given), stdout and stderr. Seconds instead of a new interpreter's imports."""
    saved = sys.argv
    sys.argv = [module, *argv]
    # What the run does to logging ends with it, as it would with its process: Hydra's job logging
    # (hydra/job_logging=disabled) sets the root to ERROR, drops its handlers and disables every logger that exists,
    # which silenced the warnings of sortednet's loggers for every later test (caplog saw none).
    logging_state = [(x, x.level, x.disabled, list(x.handlers)) for x in [logging.root, *_loggers()]]
    try:
        with warnings.catch_warnings():  # the run's own warning filters end with it
            # runpy's note that the module was imported before (by an earlier test) is no news here
            warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
            # alter_sys: the module is sys.modules["__main__"] while it runs, as under `python -m`, so the type
            # hints of its config dataclasses resolve in its own namespace
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = saved
        for logger in _loggers():  # the loggers the run made (its imports) start enabled, as in a fresh process
            logger.disabled = False
        for logger, level, disabled, handlers in logging_state:
            logger.setLevel(level)
            logger.disabled = disabled
            logger.handlers[:] = handlers
    out, err = capsys.readouterr()
    return code, out, err


def train_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """``python -m sortednet.train ARGV`` in this process (:func:`main_in_process`): its exit status and stderr.
    For runs that stop before training (bad input)."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        code, _, err = main_in_process("sortednet.train", argv, capsys)
    finally:
        GlobalHydra.instance().clear()
    return code, err


def run_main(main, argv, capsys) -> tuple[int, str, str]:
    """A command's ``main(argv)`` in this process (every argument as text): its exit status, stdout and stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *words: str, alone: bool = True) -> str:
    """Assert a command's refusal as users see it: status 2, no traceback, one ``sortednet: error: …`` line holding
    every word, and (``alone``) nothing else on stderr; ``alone=False`` lets warnings stand beside the one error
    line (a training run's loggers and Hydra). Returns the error line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("sortednet: error: ")]
    assert len(errors) == 1 and all(word in errors[0] for word in words), err
    if alone:
        assert lines == errors, err
    return errors[0]


def one_line(error: pytest.ExceptionInfo) -> str:
    """The message of a raised error (``pytest.raises``), asserted to be one line."""
    message = str(error.value)
    assert "\n" not in message, message
    return message


def succeeded(process: subprocess.CompletedProcess) -> str:
    """The stdout of a process that must have exited with status 0 (else its stderr's end, as the failure)."""
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout


def csv_metrics(run_dir: Path) -> list[dict]:
    """The rows the CSV logger wrote for the run in ``run_dir``."""
    return list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))


def run_checkpoint(run_dir: Path, name: str = "last.ckpt") -> dict:
    """A checkpoint the run in ``run_dir`` wrote, loaded on the CPU."""
    return torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)


def compose_train(*overrides: str):
    """The training config composed from ``conf/`` with ``overrides``, as a typed TrainConfig."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import sortednet.train  # noqa: F401  (registers the schema)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["run_dir=/tmp/unused", *overrides])
    return OmegaConf.to_object(cfg)


# ---------------------------------------------------------------- checkpoints as training writes them


def sorted_module(model=None, objective=None, exits=(2, 4, 6, 8), cache_dir=None, **kwargs):
    """A SortedModule as ``sortednet.train`` builds it (weights loaded by ``build_net``, then handed to the
    module); ``model``/``objective`` default to the embedded model and SoFT; ``kwargs`` go to the module."""
    from sortednet.config import ModelConfig, ObjectiveConfig
    from sortednet.objectives import build_net
    from sortednet.training.module import SortedModule

    model, objective = model or ModelConfig(), objective or ObjectiveConfig()
    net, built_exits = build_net(model, objective, list(exits), str(cache_dir) if cache_dir else None)
    return SortedModule(net, built_exits, model, objective, **kwargs)


def save_checkpoint(path: Path, state_dict: dict, meta) -> Path:
    """A checkpoint in the format Lightning + SortedModule.on_save_checkpoint write; ``meta`` a
    :class:`sortednet.checkpoint.Metadata` or its record as a dict (a hand-made one, to test the reader)."""
    import lightning

    if not isinstance(meta, dict):  # a sortednet.checkpoint.Metadata
        meta = meta.to_record()
    torch.save(
        {"epoch": 0, "global_step": 0, "pytorch-lightning_version": lightning.__version__, "state_dict": state_dict,
         "sortednet": meta},
        path,
    )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """soft: the embedded 8-layer LLaMA (exits 2,4,6,8) as SortedModule saves it; ict: the same with its
    own heads for 2,4,6; tied: a 4-layer LLaMA with tied embeddings and an own head for exit 2."""
    from transformers import AutoModelForCausalLM

    from sortednet.model import SortedLM

    root = tmp_path_factory.mktemp("ckpts")
    module = sorted_module(cache_dir=cache_dir)
    paths = {"soft": save_checkpoint(root / "soft.ckpt", module.state_dict(), module.metadata())}

    torch.manual_seed(1)
    module.net.add_exit_heads([2, 4, 6, 8])
    for head in module.net.exit_heads.values():
        head.weight.data += 0.05 * torch.randn_like(head.weight)
    meta = dataclasses.replace(module.metadata(), objective="ict")
    assert meta.exit_heads == [2, 4, 6]
    paths["ict"] = save_checkpoint(root / "ict.ckpt", module.state_dict(), meta)

    tokenizer_size = module.net.lm.config.vocab_size
    lm = AutoModelForCausalLM.from_pretrained(
        save_tiny("llama", root / "tied", vocab_size=tokenizer_size, tie_word_embeddings=True)
    )
    net = SortedLM(lm)
    assert net.lm_head.weight is lm.get_input_embeddings().weight
    net.add_exit_heads([2, 4])
    meta = {
        "objective": "ict",
        "exits": [2, 4],
        "num_layers": 4,
        "exit_heads": [2],
        "hf_config": lm.config.to_dict(),
        "model": str(root / "tied"),
        "tokenizer": "embedded",
    }
    paths["tied"] = save_checkpoint(root / "tied.ckpt", {f"net.{k}": v for k, v in net.state_dict().items()}, meta)
    return paths


def rows_of_very_different_lengths(n: int) -> list[dict]:
    """Alpaca rows whose responses run from 1 to ~40 words: micro-batches of very different token counts, so a
    mean of micro-batch means would weight tokens very unevenly."""
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [
        {
            "instruction": f"Say item {i}.",
            "input": "",
            "output": " ".join(words[j % 10] for j in range(1 + 13 * (i % 4))),
        }
        for i in range(n)
    ]
