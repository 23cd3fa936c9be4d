"""Measured milliseconds per token of every exit, cached per checkpoint, device and thread count, and the
deepest exit within a latency budget (``generate exit=auto``, ``evaluate suite=pareto``)."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from sortednet.errors import SortedNetError
from sortednet.inference.decode import generate_batch
from sortednet.inference.load import prompt_style_of
from sortednet.io import write_text_atomically
from sortednet.prompts import encode_prompts

PROFILE_TOKENS, PROFILE_WARMUP, PROFILE_REPEATS = 16, 2, 5
PROFILE_INSTRUCTION = "Write one sentence about the weather."


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_key(device: torch.device, dtype: torch.dtype) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return f"{device.type}:{name}|threads={torch.get_num_threads()}|{str(dtype).removeprefix('torch.')}"


def profile_path(ckpt: str) -> Path:
    return Path(str(Path(ckpt).expanduser()).rstrip("/") + ".latency.json")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a timing on CUDA is otherwise only of the launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(net, tokenizer, meta: dict, device: torch.device) -> dict[int, float]:
    """Milliseconds per generated token of each exit (greedy, KV cache, the median of a few runs), decoded by
    :func:`sortednet.inference.decode.generate_batch` as every exit-K answer is."""
    (prompt,) = encode_prompts(tokenizer, prompt_style_of(meta, tokenizer), [{"instruction": PROFILE_INSTRUCTION}])
    times: dict[int, list[float]] = {e: [] for e in meta.exits}
    # Rounds over all exits rather than all runs of one exit, then the next: a slow spell of the machine
    # (clock ramp-up, a neighbour's job) then spreads over every exit instead of inflating one.
    for round_ in range(PROFILE_WARMUP + PROFILE_REPEATS):
        for e in meta.exits:
            sync(device)
            start = time.perf_counter()
            # no EOS: every run makes the same number of tokens
            generate_batch(net, [prompt], mode="exit", exit=e, max_new_tokens=PROFILE_TOKENS, eos_token_id=None)
            sync(device)
            if round_ >= PROFILE_WARMUP:
                times[e].append(time.perf_counter() - start)
    return {e: 1000 * statistics.median(t) / PROFILE_TOKENS for e, t in times.items()}


def latency_profile(ckpt: str, net, tokenizer, meta, device) -> tuple[dict[int, float], Path, bool]:
    """The profile of checkpoint ``ckpt`` on this device and thread count: cached in ``<ckpt>.latency.json``,
    measured and cached when absent. Returns it, the cache's path and whether it was cached."""
    path = profile_path(ckpt)
    key = device_key(device, net.lm_head.weight.dtype)
    try:
        cache = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, json.JSONDecodeError):
        cache = {}
    entry = cache.get(key) or {}
    cached = {int(e): float(ms) for e, ms in (entry.get("ms_per_token") or {}).items()}
    same_method = entry.get("tokens") == PROFILE_TOKENS and entry.get("repeats") == PROFILE_REPEATS
    if all(e in cached for e in meta.exits) and same_method:
        return {e: cached[e] for e in meta.exits}, path, True
    print(f"measuring the latency of exits {meta.exits} on {key} ...", file=sys.stderr)
    profile = measure_latency(net, tokenizer, meta, device)
    cache[key] = {
        "device": key.split("|")[0],
        "threads": torch.get_num_threads(),
        "dtype": str(net.lm_head.weight.dtype).removeprefix("torch."),
        "tokens": PROFILE_TOKENS,
        "warmup": PROFILE_WARMUP,
        "repeats": PROFILE_REPEATS,
        "ms_per_token": {str(e): round(ms, 4) for e, ms in profile.items()},
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        write_text_atomically(path, json.dumps(cache, indent=2, sort_keys=True) + "\n")
    except OSError as error:
        print(f"sortednet: warning: cannot cache the latency profile in {path} ({error})", file=sys.stderr)
    return profile, path, False


def pick_exit(profile: dict[int, float], budget_ms: float, where: str) -> int:
    """The deepest exit whose ms/token is within ``budget_ms``, or a one-line error naming the fastest."""
    fitting = [e for e, ms in profile.items() if ms <= budget_ms]
    if not fitting:
        fastest = min(profile, key=profile.get)
        raise SortedNetError(
            f"no exit fits latency_ms_per_token={budget_ms:g}: the fastest, exit {fastest}, takes "
            f"{profile[fastest]:.3f} ms per token ({where}); raise latency_ms_per_token"
        )
    return max(fitting)
