"""`python -m sortednet.generate ckpt=PATH exit=K prompt="..." [key=value ...]`: text from sub-model K.

stdout carries only the generated text: streamed token by token with batch_size=1, each answer followed
by a newline, and answers to a prompts file separated by one blank line — so two runs can be diffed.
Timings (tokens/s per prompt), the latency profile and decoding statistics go to stderr.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sortednet import cli
from sortednet.data.rows import read_rows
from sortednet.errors import SortedNetError
from sortednet.inference.decode import generate_batch
from sortednet.inference.latency import device_key, latency_profile, pick_exit, sync
from sortednet.inference.load import load_sorted, prompt_style_of, resolve_device
from sortednet.inference.stream import TextStream
from sortednet.io import read_text
from sortednet.prompts import encode_prompts

MODES = ("exit", "speculative", "dynamic")


@dataclass
class GenerateConfig:
    ckpt: str = ""
    """A .ckpt written by sortednet.train, or a directory written by sortednet.export or sortednet.consolidate."""
    exit: int | str | None = None
    """The exit K (a layer count in [1, L]), or auto (the deepest exit within latency_ms_per_token);
    null: L, the full model."""
    prompt: str | None = None
    """One instruction, taken verbatim (commas, colons and brackets included)."""
    input: str = ""
    """The instruction's optional Alpaca input."""
    prompts: str | None = None
    """A file of instructions instead of prompt: .txt (one per line, blank lines skipped) or Alpaca-format
    .json / .jsonl (instruction, optional input)."""
    max_new_tokens: int = 128
    """The most tokens generated per answer."""
    do_sample: bool = False
    """false: greedy; true: sampling with temperature and top_p (no top-k), seeded by seed."""
    temperature: float = 1.0
    """Sampling temperature (> 0; with do_sample=true)."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p, in (0, 1]."""
    seed: int = 0
    """Seed of the sampling."""
    batch_size: int = 1
    """1 streams the text; more decode that many prompts together (every mode)."""
    mode: str = "exit"
    """exit (one sub-model) | speculative (draft_exit drafts, the full model verifies) | dynamic (each token
    leaves at the first exit whose confidence reaches its threshold)."""
    draft_exit: int | None = None
    """mode=speculative: the exit E < L that drafts the tokens."""
    thresholds: list[float] | None = None
    """mode=dynamic: one confidence threshold in (0, 1] per exit of the checkpoint's exit set below L
    (sortednet.calibrate picks them)."""
    latency_ms_per_token: float | None = None
    """exit=auto: the budget in ms per token; the profile is measured once and cached in
    <ckpt>.latency.json, per device and thread count."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda | cuda:N."""
    cache_dir: str | None = None
    """Where the embedded assets and hub downloads live (default: $SORTEDNET_CACHE or ~/.cache/sortednet)."""


# ---------------------------------------------------------------- input


def check_settings(cfg: GenerateConfig) -> None:
    """Everything that can be checked before the model is loaded."""
    if not cfg.ckpt:
        raise SortedNetError("no checkpoint given; pass ckpt=PATH.ckpt (written by sortednet.train) or ckpt=EXPORT_DIR")
    if cfg.mode not in MODES:
        raise SortedNetError(f"unknown mode={cfg.mode!r}; use one of {', '.join(MODES)}")
    if cfg.prompt is None and cfg.prompts is None:
        raise SortedNetError('no prompt given; pass prompt="..." or prompts=FILE (.txt, .json or .jsonl)')
    if cfg.prompt is not None and cfg.prompts is not None:
        raise SortedNetError("pass either prompt= or prompts=, not both")
    if cfg.prompt is not None and not cfg.prompt.strip():
        raise SortedNetError('the prompt is empty; pass an instruction: prompt="..."')
    if cfg.max_new_tokens < 1:
        raise SortedNetError(f"max_new_tokens={cfg.max_new_tokens} must be at least 1")
    if cfg.batch_size < 1:
        raise SortedNetError(f"batch_size={cfg.batch_size} must be at least 1")
    if cfg.do_sample and not cfg.temperature > 0:
        raise SortedNetError(f"temperature={cfg.temperature} must be > 0 (for greedy decoding use do_sample=false)")
    if not 0 < cfg.top_p <= 1:
        raise SortedNetError(f"top_p={cfg.top_p} must be in (0, 1]")
    if cfg.draft_exit is not None and cfg.mode != "speculative":
        raise SortedNetError(f"draft_exit is for mode=speculative (this is mode={cfg.mode}); drop it or set the mode")
    if cfg.mode == "speculative" and cfg.draft_exit is None:
        raise SortedNetError("mode=speculative needs a draft exit: draft_exit=E, with E below the verifying exit")
    if cfg.thresholds is not None and cfg.mode != "dynamic":
        raise SortedNetError(f"thresholds are for mode=dynamic (this is mode={cfg.mode}); drop them or set the mode")
    if isinstance(cfg.exit, str):
        if cfg.exit != "auto":
            raise SortedNetError(f"exit={cfg.exit!r} is neither a layer count nor auto; pass exit=K or exit=auto")
        if cfg.mode != "exit":
            raise SortedNetError(f"exit=auto picks one exit for mode=exit, not mode={cfg.mode}")
        if cfg.latency_ms_per_token is None:
            raise SortedNetError("exit=auto needs a latency budget: latency_ms_per_token=X")
    if cfg.latency_ms_per_token is not None:
        if cfg.exit != "auto":
            raise SortedNetError("latency_ms_per_token is for exit=auto; pass exit=auto or drop it")
        if not cfg.latency_ms_per_token > 0:
            raise SortedNetError(f"latency_ms_per_token={cfg.latency_ms_per_token} must be > 0")


def read_prompts(path: str) -> list[tuple[str, str]]:
    """(instruction, input) pairs from a .txt file (one instruction per line) or an Alpaca .json/.jsonl file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise SortedNetError(f"prompts file {path!r} not found; pass prompts=FILE.txt|FILE.json|FILE.jsonl")
    if file.suffix in (".json", ".jsonl"):
        pairs = []
        for index, row in enumerate(read_rows(str(file))):
            if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
                raise SortedNetError(f"row {index} of {path} has no 'instruction' text; every row needs one")
            if not row["instruction"].strip():
                raise SortedNetError(f"row {index} of {path} has an empty instruction; fill it or drop the row")
            text = row.get("input") or ""
            if not isinstance(text, str):
                raise SortedNetError(f"row {index} of {path}: 'input' is a {type(text).__name__}, not text")
            pairs.append((row["instruction"], text))
    elif file.suffix == ".txt":
        pairs = [(line, "") for line in read_text(file, "prompts file").splitlines() if line.strip()]
    else:
        raise SortedNetError(f"prompts file {path!r} must end in .txt (one instruction per line), .json or .jsonl")
    if not pairs:
        raise SortedNetError(f"prompts file {path!r} holds no prompt")
    return pairs


def check_against_model(cfg: GenerateConfig, net, meta: dict) -> None:
    """The settings that depend on the checkpoint: exits, draft exit, thresholds."""
    num_layers, exits = net.num_layers, list(meta.exits)
    if isinstance(cfg.exit, int) and not 1 <= cfg.exit <= num_layers:
        raise SortedNetError(
            f"exit={cfg.exit} is outside [1, {num_layers}] (the checkpoint has {num_layers} layers; "
            f"trained exits: {exits})"
        )
    if cfg.mode != "exit" and cfg.exit is not None and cfg.exit != num_layers:
        what = "verifies with" if cfg.mode == "speculative" else "ends at"
        raise SortedNetError(
            f"mode={cfg.mode} {what} the full model (exit {num_layers}); drop exit={cfg.exit} "
            f"(or use mode=exit exit={cfg.exit})"
        )
    if cfg.mode == "speculative" and not 1 <= cfg.draft_exit < num_layers:
        raise SortedNetError(
            f"draft_exit={cfg.draft_exit} must be in [1, {num_layers - 1}] (below the last layer, {num_layers}); "
            f"trained exits: {exits}"
        )
    if cfg.mode == "dynamic":
        below = exits[:-1]
        if not below:
            raise SortedNetError(f"mode=dynamic needs an exit set with exits below L; this checkpoint has {exits}")
        if cfg.thresholds is None:
            raise SortedNetError(
                f"mode=dynamic needs thresholds=[...]: {len(below)} values in (0, 1], one per exit {below} "
                f"(1.0 never exits there)"
            )
        if len(cfg.thresholds) != len(below):
            raise SortedNetError(
                f"thresholds has {len(cfg.thresholds)} values, expected {len(below)}: one per exit {below} "
                f"(the checkpoint's exits below the last, {exits[-1]})"
            )
        bad = [t for t in cfg.thresholds if not 0 < t <= 1]
        if bad:
            raise SortedNetError(f"thresholds {bad} are outside (0, 1]; each is a confidence in (0, 1]")


def prompt_ids(cfg: GenerateConfig, pairs, tokenizer, net, meta) -> list[list[int]]:
    """Token ids of each prompt, exactly as training tokenizes them; checked against the context window."""
    rows = [{"instruction": instruction, "input": text} for instruction, text in pairs]
    ids = encode_prompts(tokenizer, prompt_style_of(meta, tokenizer), rows)
    window = getattr(net.lm.config, "max_position_embeddings", None)
    if window:
        for index, prompt in enumerate(ids):
            if len(prompt) + cfg.max_new_tokens > window:
                which = "the prompt" if len(ids) == 1 else f"prompt {index + 1}"
                raise SortedNetError(
                    f"{which} is {len(prompt)} tokens; with max_new_tokens={cfg.max_new_tokens} that exceeds the "
                    f"model's max_position_embeddings={window}; shorten it or lower max_new_tokens"
                )
    return ids


# ---------------------------------------------------------------- generation


def _report(label: str, tokens: int, seconds: float, extra: str = "") -> None:
    rate = tokens / seconds if seconds > 0 else float("inf")
    print(f"{label}: {tokens} tokens in {seconds:.3f} s ({rate:.1f} tokens/s){extra}", file=sys.stderr)


def _format_stats(stats: dict) -> str:
    def fmt(value):
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list) and len(value) > 12:
            return f"[{', '.join(fmt(v) for v in value[:6])}, ... ({len(value)} values)]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
        return str(value)

    return ", ".join(f"{key}={fmt(value)}" for key, value in stats.items())


@torch.no_grad()
def generate_decoded(
    cfg: GenerateConfig, net, tokenizer, prompts: list[list[int]], exits: list[int], exit_: int | None = None
) -> tuple[int, float]:
    """Every mode through :func:`sortednet.inference.decode.generate_batch` (mode=exit: sub-model ``exit_``),
    ``batch_size`` prompts together; streams when batch_size=1. A prompt's text does not depend on the batch
    it is in (greedy or sampled)."""
    # dynamic mode tries the checkpoint's exit set, shallow to deep
    extra = {"exits": list(exits)} if cfg.mode == "dynamic" else {}
    total_tokens, total_seconds, n = 0, 0.0, len(prompts)
    device = next(net.parameters()).device
    for start in range(0, n, cfg.batch_size):
        chunk = prompts[start : start + cfg.batch_size]
        if start:
            sys.stdout.write("\n")  # the blank line between answers
        stream = TextStream(tokenizer) if len(chunk) == 1 else None
        sync(device)
        began = time.perf_counter()
        rows, stats = generate_batch(
            net,
            [list(ids) for ids in chunk],
            mode=cfg.mode,
            exit=exit_,
            draft_exit=cfg.draft_exit,
            thresholds=list(cfg.thresholds) if cfg.thresholds is not None else None,
            **extra,
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            do_sample=cfg.do_sample,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=cfg.seed,
            on_token=None if stream is None else (lambda _row, token, stream=stream: stream.push(token)),
        )
        sync(device)
        seconds = time.perf_counter() - began
        if stream is not None:
            stream.finish(rows[0])
            sys.stdout.write("\n")
        else:
            sys.stdout.write("\n\n".join(tokenizer.batch_decode(rows, skip_special_tokens=True)) + "\n")
        sys.stdout.flush()
        tokens = sum(map(len, rows))
        total_tokens, total_seconds = total_tokens + tokens, total_seconds + seconds
        where = f"{start + 1}/{n}" if len(chunk) == 1 else f"{start + 1}-{start + len(chunk)}/{n}"
        batch = "" if len(chunk) == 1 else f", batch of {len(chunk)}"
        label = f"exit {exit_}" if cfg.mode == "exit" else cfg.mode
        suffix = "" if cfg.mode == "exit" else f"; {_format_stats(stats)}"
        _report(f"[{where}] {label}{batch}", tokens, seconds, suffix)
    return total_tokens, total_seconds


def generate(cfg: GenerateConfig) -> None:
    """The whole command: check, load, (profile), generate to stdout, report to stderr."""
    check_settings(cfg)
    pairs = [(cfg.prompt, cfg.input)] if cfg.prompt is not None else read_prompts(cfg.prompts)
    device = resolve_device(cfg.device)
    net, tokenizer, meta = load_sorted(cfg.ckpt, cfg.cache_dir, device)
    check_against_model(cfg, net, meta)
    prompts = prompt_ids(cfg, pairs, tokenizer, net, meta)
    if cfg.mode != "exit":
        tokens, seconds = generate_decoded(cfg, net, tokenizer, prompts, list(meta.exits))
    else:
        exit_ = cfg.exit if isinstance(cfg.exit, int) else net.num_layers
        if cfg.exit == "auto":
            profile, path, cached = latency_profile(cfg.ckpt, net, tokenizer, meta, device)
            source = f"cached in {path}" if cached else f"measured, written to {path}"
            lines = "\n".join(f"  exit {e}: {ms:.3f} ms/token" for e, ms in profile.items())
            print(
                f"latency profile ({device_key(device, net.lm_head.weight.dtype)}; {source}):\n{lines}", file=sys.stderr
            )
            exit_ = pick_exit(profile, cfg.latency_ms_per_token, f"profile in {path}")
            print(
                f"exit=auto: exit {exit_} ({profile[exit_]:.3f} ms/token <= {cfg.latency_ms_per_token:g})",
                file=sys.stderr,
            )
        elif exit_ not in meta.exits:
            print(f"sortednet: warning: exit {exit_} is not one of the trained exits {meta.exits}", file=sys.stderr)
        tokens, seconds = generate_decoded(cfg, net, tokenizer, prompts, list(meta.exits), exit_)
    if len(prompts) > 1:
        _report(f"total ({len(prompts)} prompts)", tokens, seconds)


def main(argv: list[str] | None = None) -> int:
    def run(cfg: GenerateConfig) -> None:
        cli.quiet_transformers()
        generate(cfg)

    return cli.run(run, GenerateConfig, argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
