"""Decoding that uses the exits: one sequence, one KV cache, layers driven one by one.

Three modes share :class:`LayerStack`, which runs any range of decoder layers over any run of positions
and keeps every layer's cache contiguous:

- ``exit``: sub-model K (layers 1..K + norm + its head), KV-cached.
- ``speculative``: self-speculative decoding. Layers ``< E`` draft tokens through exit E; the hidden
  states they leave at depth E are carried straight into layers ``>= E``, which verify all drafted
  positions in one chunk — the draft's layer-``<E`` keys and values are the verifier's. A rejected
  suffix is cropped from the one cache. Greedy output is the full model's greedy output token for
  token; with sampling, standard speculative rejection sampling keeps the full model's distribution.
  The draft length adapts to acceptance, and drafting switches itself off while it does not pay
  (measured time per committed token against plain decoding), probing again later.
- ``dynamic``: per token, exits are tried shallow to deep; the first whose top-1 probability reaches
  its threshold emits the token. Keys and values of layers a token skipped are filled *lazily and
  exactly*: when a later token goes deeper, the skipped positions' hidden states (kept at the depth
  they reached) run through the missing layers in the same chunk as the new token. Why this policy:
  later tokens attend to exactly the keys and values the full model would have made, so there is no
  drift to calibrate against (state copying, as in CALM, makes approximate KVs), and the catch-up runs
  as one chunk per layer, which costs about one token's time on memory-bound hardware. With every
  threshold at 1.0 no early exit is taken and the output is the full model's.

Nothing in this file knows about Lightning or Hydra.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from sortednet.errors import SortedNetError
from sortednet.model import SortedLM


class LayerStack:
    """Runs decoder layers ``[start, stop)`` (0-based) over positions, one KV cache for all of them."""

    def __init__(self, net: SortedLM):
        from transformers import DynamicCache

        self.net = net
        self.layers = net.decoder.layers
        self.cache = DynamicCache(config=net.lm.config)
        self.device = next(net.parameters()).device
        self.layer_evals = 0  # token x layer evaluations, for the stats

    def length(self, layer: int) -> int:
        """Positions whose keys and values layer ``layer`` holds."""
        return self.cache.get_seq_length(layer) if layer < len(self.cache.layers) else 0

    def embed(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor([list(token_ids)], device=self.device)
        return self.net.decoder.embed_tokens(ids)

    def run(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """``hidden`` ([1, q, D]) continues every layer's cache from ``start`` to ``stop``."""
        q = hidden.shape[1]
        past, positions, mask, rope = None, None, None, None
        for layer in range(start, stop):
            if self.length(layer) != past:  # layers that hold the same positions share positions, mask, rope
                past = self.length(layer)
                positions = torch.arange(past, past + q, device=self.device)[None]
                mask = None
                if q > 1:  # SDPA's is_causal would align the causal mask top-left; give it explicitly
                    allowed = torch.arange(past + q, device=self.device)[None, :] <= positions[0, :, None]
                    mask = torch.zeros(allowed.shape, dtype=hidden.dtype, device=self.device)
                    mask = mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)[None, None]
                rope = self.net.decoder.rotary_emb(hidden, positions)
            hidden = self.layers[layer](
                hidden, attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True,
                position_embeddings=rope,
            )  # fmt: skip
            self.layer_evals += q
        return hidden

    def logits(self, hidden: torch.Tensor, exit_: int) -> torch.Tensor:
        """Exit ``exit_``'s logits (float32) for hidden states at depth ``exit_``."""
        return self.net.head(exit_)(self.net.norm(hidden)).float()

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions of every layer."""
        for index, layer in enumerate(self.cache.layers):
            extra = self.length(index) - length
            if extra > 0:
                layer.crop(-extra)  # transformers 5 takes the number of positions to remove, negated


class Sampler:
    """Greedy, or temperature + top-p sampling from a seeded generator; also gives the distributions."""

    def __init__(self, do_sample: bool, temperature: float, top_p: float, seed: int | None, device):
        if do_sample and temperature <= 0:
            raise SortedNetError(f"temperature={temperature} must be > 0 when sampling")
        if not 0 < top_p <= 1:
            raise SortedNetError(f"top_p={top_p} must be in (0, 1]")
        self.do_sample, self.temperature, self.top_p = do_sample, temperature, top_p
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(0 if seed is None else seed)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution tokens are drawn from (after temperature and top-p), rows of ``logits``."""
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(-1) - sorted_probs > self.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
            probs = probs / probs.sum(-1, keepdim=True)
        return probs

    def draw(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def pick(self, logits: torch.Tensor) -> int:
        """The next token from one row of logits."""
        return int(logits.argmax()) if not self.do_sample else self.draw(self.probs(logits))


class _Emitter:
    """Collects emitted tokens, calls ``on_token``, knows when to stop."""

    def __init__(self, max_new_tokens: int, eos_token_id: int | None, on_token: Callable[[int], None] | None):
        self.tokens: list[int] = []
        self.max_new_tokens, self.eos, self.on_token = max_new_tokens, eos_token_id, on_token

    def emit(self, token: int) -> bool:
        """Record ``token``; True when generation must stop."""
        self.tokens.append(token)
        if self.on_token:
            self.on_token(token)
        return token == self.eos or len(self.tokens) >= self.max_new_tokens

    @property
    def done(self) -> bool:
        return bool(self.tokens) and (self.tokens[-1] == self.eos or len(self.tokens) >= self.max_new_tokens)


def _exit_decode(stack: LayerStack, prompt: list[int], exit_: int, sampler: Sampler, out: _Emitter) -> dict:
    hidden = stack.run(stack.embed(prompt), 0, exit_)
    while not out.emit(token := sampler.pick(stack.logits(hidden[0, -1], exit_))):
        hidden = stack.run(stack.embed([token]), 0, exit_)
    return {}


def _speculative_decode(
    stack: LayerStack, prompt: list[int], draft_exit: int, sampler: Sampler, out: _Emitter, max_draft: int = 8
) -> dict:
    full, E = stack.net.num_layers, draft_exit
    hidden = stack.run(stack.embed(prompt), 0, full)
    token = sampler.pick(stack.logits(hidden[0, -1], full))
    if out.emit(token):
        return {"drafted": 0, "accepted": 0}
    k, drafted, accepted = 4, 0, 0
    # Seconds per committed token, plain vs speculative (moving averages); drafting pauses while it loses.
    cost = {"plain": None, "spec": None, "layer": None}
    pause, probe_every, rounds = 0, 16, 0
    while not out.done:
        position = stack.length(0)
        start = time.perf_counter()
        if pause > 0:  # plain decoding, timed so the choice stays informed
            hidden = stack.run(stack.embed([token]), 0, full)
            token = sampler.pick(stack.logits(hidden[0, -1], full))
            pause -= 1
            _update(cost, "plain", (time.perf_counter() - start), 1)
            out.emit(token)
            continue
        # Draft k tokens with layers < E; keep their depth-E hidden states for the verifier.
        depth_e, drafts, draft_probs = [], [], []
        pending = token
        for _ in range(min(k, out.max_new_tokens - len(out.tokens))):
            step_start = time.perf_counter()
            h = stack.run(stack.embed([pending]), 0, E)
            depth_e.append(h)
            logits = stack.logits(h[0, -1], E)
            if sampler.do_sample:
                probs = sampler.probs(logits)
                pending = sampler.draw(probs)
                draft_probs.append(probs)
            else:
                pending = int(logits.argmax())
            drafts.append(pending)
            if cost["plain"] is None:  # until plain decoding is timed, estimate it from the draft's layers
                _update(cost, "layer", time.perf_counter() - step_start, E)
            if pending == out.eos:  # nothing to draft past the end
                break
        # Verify every drafted position with layers >= E in one chunk.
        verified = stack.logits(stack.run(torch.cat(depth_e, dim=1), E, full)[0], full)
        n_ok, correction = 0, None
        for j, d in enumerate(drafts):
            if sampler.do_sample:
                p = sampler.probs(verified[j])
                q = draft_probs[j]
                if torch.rand((), generator=sampler.generator, device=p.device) * q[d] <= p[d]:
                    n_ok += 1
                    continue
                residual = (p - q).clamp_min(0)
                correction = sampler.draw(residual / residual.sum() if residual.sum() > 0 else p)
            else:
                full_choice = int(verified[j].argmax())
                if full_choice == d:
                    n_ok += 1
                    continue
                correction = full_choice
            break
        drafted += len(drafts)
        accepted += n_ok
        committed = drafts[:n_ok] + ([correction] if correction is not None else [])
        # Positions up to the last accepted draft's input are right in every layer; drop the rest.
        stack.crop(position + n_ok + (1 if correction is not None else 0))
        for t in committed:
            if out.emit(t):
                break
        token = committed[-1]
        _update(cost, "spec", time.perf_counter() - start, len(committed))
        k = min(max_draft, k + 1) if n_ok == len(drafts) else max(1, n_ok)
        rounds += 1
        plain = cost["plain"] if cost["plain"] is not None else cost["layer"] * full
        if cost["plain"] is None and rounds == 2:
            pause = 2  # time plain decoding itself: the estimate from the draft's layers is rough
        elif cost["spec"] > plain:
            pause = probe_every
    return {"drafted": drafted, "accepted": accepted, "acceptance": accepted / max(drafted, 1)}


def _update(cost: dict, key: str, seconds: float, tokens: int, decay: float = 0.7) -> None:
    per_token = seconds / max(tokens, 1)
    cost[key] = per_token if cost[key] is None else decay * cost[key] + (1 - decay) * per_token


def _dynamic_decode(
    stack: LayerStack, prompt: list[int], exits: list[int], thresholds: list[float], sampler: Sampler, out: _Emitter
) -> dict:
    full = stack.net.num_layers
    hidden_at: dict[int, torch.Tensor] = {}  # position -> hidden state at the depth it reached (< full)
    hidden = stack.run(stack.embed(prompt), 0, full)
    token = sampler.pick(stack.logits(hidden[0, -1], full))
    depths = [full]  # the first token comes from the prompt's pass through every layer
    while not out.emit(token):
        position = stack.length(0)
        h, layer = stack.embed([token]), 0
        for e, threshold in zip(exits, [*thresholds, None], strict=True):
            for lay in range(layer, e):
                # Skipped positions waiting for this layer join the new token's chunk (they sit at depth lay).
                gap = range(stack.length(lay), position)
                chunk = torch.cat([*(hidden_at.pop(p) for p in gap), h], dim=1) if gap else h
                chunk = stack.run(chunk, lay, lay + 1)
                for i, p in enumerate(gap):
                    hidden_at[p] = chunk[:, i : i + 1]
                h = chunk[:, -1:]
            layer = e
            logits = stack.logits(h[0, -1], e)
            if threshold is None or (threshold < 1.0 and float(torch.softmax(logits, -1).max()) >= threshold):
                break
        if layer < full:
            hidden_at[position] = h
        depths.append(layer)
        token = sampler.pick(logits)
    return {"mean_exit": sum(depths) / max(len(depths), 1), "exit_per_token": depths}


def generate(
    net: SortedLM,
    input_ids: list[int],
    *,
    mode: str = "exit",
    exit: int | None = None,  # noqa: A002 - the CLI's name
    draft_exit: int | None = None,
    thresholds: Sequence[float] | None = None,
    exits: Sequence[int] | None = None,
    max_new_tokens: int = 128,
    eos_token_id: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    on_token: Callable[[int], None] | None = None,
) -> tuple[list[int], dict]:
    """New tokens after ``input_ids`` (one sequence) and stats (tokens, seconds, tokens_per_s, and
    acceptance for speculative, mean_exit for dynamic).

    ``exits`` (dynamic) are the exits tried, shallow to deep, ending at L; ``thresholds`` has one value
    in (0, 1] per exit below L (1.0 never exits there). Defaults: ``exits`` = the exits with own heads
    plus L, else every exit of the set must be given.
    """
    L = net.num_layers
    if not input_ids:
        raise SortedNetError("the prompt is empty; give some text")
    sampler = Sampler(do_sample, temperature, top_p, seed, next(net.parameters()).device)
    out = _Emitter(max_new_tokens, eos_token_id, on_token)
    start = time.perf_counter()
    with torch.inference_mode():
        stack = LayerStack(net)
        if mode == "exit":
            exit_ = L if exit is None else exit
            if not 1 <= exit_ <= L:
                raise SortedNetError(f"exit={exit_} is outside [1, {L}]")
            stats = _exit_decode(stack, list(input_ids), exit_, sampler, out)
        elif mode in ("speculative", "dynamic") and exit not in (None, L):
            raise SortedNetError(f"mode={mode} always ends at the last layer {L}; leave exit unset")
        elif mode == "speculative":
            if draft_exit is None or not 1 <= draft_exit < L:
                raise SortedNetError(f"draft_exit={draft_exit} must be in [1, {L - 1}] (below the last layer {L})")
            stats = _speculative_decode(stack, list(input_ids), draft_exit, sampler, out)
        elif mode == "dynamic":
            exits = list(exits or [])
            if not exits or exits[-1] != L or exits != sorted(set(exits)) or exits[0] < 1:
                raise SortedNetError(f"dynamic mode needs the sorted exits to try, ending at {L}; got {exits}")
            thresholds = list(thresholds or [])
            if len(thresholds) != len(exits) - 1 or not all(0 < t <= 1 for t in thresholds):
                raise SortedNetError(
                    f"thresholds={thresholds}: give {len(exits) - 1} values in (0, 1], one per exit {exits[:-1]}"
                )
            stats = _dynamic_decode(stack, list(input_ids), exits, thresholds, sampler, out)
        else:
            raise SortedNetError(f"unknown mode {mode!r}; use exit, speculative or dynamic")
    seconds = time.perf_counter() - start
    stats.update(tokens=len(out.tokens), seconds=seconds, tokens_per_s=len(out.tokens) / seconds)
    stats["layer_evals_per_token"] = stack.layer_evals / max(len(out.tokens), 1)
    return out.tokens, stats
