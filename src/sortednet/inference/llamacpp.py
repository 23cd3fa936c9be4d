"""llama.cpp (through ``llama-cpp-python``, the ``llamacpp`` extra) running the GGUF files of
:mod:`sortednet.inference.gguf_export`: logits for a token sequence, greedy continuations, timed decoding, and an
exit-K GGUF as the draft model of llama.cpp's own speculative decoding.

llama-cpp-python builds llama.cpp from source at install time (minutes), so it is an extra, not a dependency;
everything here says so in one line when it is missing.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import numpy as np

from sortednet.errors import SortedNetError

EXTRA_HINT = "pip install 'sortednet[llamacpp]' (builds llama.cpp from source, about 7 minutes on 2 cores)"


def require_llama_cpp():
    """The ``llama_cpp`` module, or a one-line error naming the extra that installs it."""
    try:  # lazy: llama-cpp-python is an optional extra (sortednet[llamacpp])
        import llama_cpp
    except ImportError as error:
        raise SortedNetError(f"llama.cpp rows need llama-cpp-python, which is not installed; {EXTRA_HINT}") from error
    return llama_cpp


def open_gguf(
    path: str | os.PathLike, n_ctx: int = 512, threads: int | None = None, float32_cache: bool = False, **kwargs
):
    """A ``llama_cpp.Llama`` over the GGUF file ``path`` with every position's logits kept (``logits_all``).

    ``float32_cache``: keys and values cached in float32; llama.cpp's default float16 cache puts its logits
    about 1e-3 off a float32 model's, too far to check a float32 file against sortednet's logits."""
    llama_cpp = require_llama_cpp()
    if not Path(path).is_file():
        raise SortedNetError(f"GGUF file {str(path)!r} not found")
    threads = threads or len(os.sched_getaffinity(0))
    if float32_cache:
        kwargs.update(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    return llama_cpp.Llama(
        model_path=str(path), logits_all=True, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
        verbose=False, **kwargs,
    )  # fmt: skip


def logits(llm, tokens: list[int]) -> np.ndarray:
    """llama.cpp's next-token logits ``[len(tokens), vocab]`` for ``tokens``, from a fresh context."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: llm.n_tokens], dtype=np.float32)


def greedy(llm, tokens: list[int], new_tokens: int) -> list[int]:
    """``new_tokens`` tokens after ``tokens``, each the argmax of llama.cpp's logits (no sampler involved)."""
    llm.reset()
    llm.eval(tokens)
    out: list[int] = []
    for _ in range(new_tokens):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def decode_speed(llm, prompt: list[int], new_tokens: int) -> float:
    """Tokens per second of batch-1 greedy decoding after ``prompt`` (prompt processing not counted)."""
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for _ in range(new_tokens):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    return new_tokens / (time.perf_counter() - start)


def generate_greedy(llm, prompt: list[int], new_tokens: int) -> list[int]:
    """``new_tokens`` greedy tokens from llama-cpp-python's own generation loop (its greedy sampler), which is the
    loop that drafts and verifies when ``llm`` has a ``draft_model``."""
    tokens = llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True)
    return [int(t) for t in itertools.islice(tokens, new_tokens)]


def exit_draft(path: str | os.PathLike, num_pred_tokens: int = 4, n_ctx: int = 512, threads: int | None = None):
    """An exit-K GGUF of the same checkpoint as llama-cpp-python's ``LlamaDraftModel``: for the tokens so far it
    returns the sub-model's ``num_pred_tokens`` greedy tokens. ``Llama(full.gguf, draft_model=...)`` verifies
    them in one batch; under greedy decoding the output is the full model's, whatever the draft proposes."""
    require_llama_cpp()
    from llama_cpp.llama_speculative import LlamaDraftModel  # lazy: the optional extra, checked above

    class ExitDraft(LlamaDraftModel):
        def __init__(self):
            # logits of the last position only: the draft never verifies anything itself
            self.llm = open_gguf(path, n_ctx=n_ctx, threads=threads)

        def __call__(self, input_ids: np.ndarray, /, **kwargs) -> np.ndarray:
            # generate() keeps the KV cache of the longest common prefix with the previous call
            drafts = generate_greedy(self.llm, [int(t) for t in input_ids], num_pred_tokens)
            return np.array(drafts, dtype=np.intc)

    return ExitDraft()
