"""Decoding that uses the exits, on batches: one KV cache, decoder layers driven one by one.

Three modes share :class:`LayerStack`, which runs any range of decoder layers over any rows of the batch,
each row over its own run of positions:

- ``exit``: sub-model K (layers 1..K + norm + its head), KV-cached.
- ``speculative``: self-speculative decoding. Layers ``< E`` draft tokens through exit E; the hidden
  states they leave at depth E are carried straight into layers ``>= E``, which verify every drafted
  position of every row in one batched call — the draft's layer-``<E`` keys and values are the
  verifier's. Rows accept different numbers of drafts; a rejected suffix is cut from that row alone.
  The output is the full model's, token for token (greedy and sampled alike, see *Sampling*). The
  draft length adapts to acceptance, and a :class:`DraftSwitch` falls back to plain decoding while
  drafting does not pay (see *The switch*).
- ``dynamic``: per token, exits are tried shallow to deep; the first whose top-1 probability reaches
  its threshold emits the token, so rows of a batch stop at different depths in the same step. Keys and
  values of layers a token skipped are filled *lazily and exactly*: when a later token of the same row
  goes deeper, the skipped positions' hidden states (kept at the depth they reached) run through the
  missing layers in the same call as the new token. Why this policy: later tokens attend to exactly the
  keys and values the full model would have made, so there is no drift to calibrate against (state
  copying, as in CALM, makes approximate KVs), and the catch-up rides along in a call that runs anyway.
  An exit whose threshold is 1.0 is not tried at all (no head computed there); with every threshold at
  1.0 the decode is plain decoding at L, the full model's output at plain decoding's cost.
  :func:`sortednet.inference.calibrate.calibrate` sets 1.0 for every exit whose head costs more than its
  early exits save.

*The switch* (speculative). Drafting pays only where enough drafts pass; at acceptance near 0 (untrained
exits) each draft is a pass through layers ``< E`` plus a head, wasted. So drafting runs in stretches
that are judged, and plain decoding (timed: the yardstick) runs in between:

- a stretch starts with one draft per row (the cheapest probe) and the draft counts adapt from there;
- a stretch whose first round drafted and accepted nothing ends there — decided by counts alone, so at
  acceptance 0 it costs exactly one round of one draft per row, whatever the clock says;
- every :attr:`DraftSwitch.JUDGED_AFTER` rounds the stretch's seconds per committed token are compared
  with plain decoding's (a moving average); slower, or nothing accepted, ends it; else it goes on;
- after a stretch ends, plain decoding runs for a pause that starts at :attr:`DraftSwitch.BASE_PAUSE`
  steps and doubles with every further losing stretch (up to :attr:`DraftSwitch.MAX_PAUSE`), so the
  probes' cost is bounded: about log2(steps / BASE_PAUSE) probes, never a share of the steps; a winning
  judgement resets the pause;
- the first judgement with no plain timing yet is preceded by :attr:`DraftSwitch.YARDSTICK_STEPS` plain
  steps that measure it;
- a draft exit that cannot pay is retired for good: when a stretch loses, the switch bounds the best speed-up
  drafting could reach (:meth:`DraftSwitch.ceiling`: the acceptance seen so far, taken optimistically, and a
  draft costing only its share of the layers); below 1, with :attr:`DraftSwitch.MIN_EVIDENCE` drafted positions
  judged, there are no more probes. On a real model whose exits agree too little for their depth, that is
  what keeps speculative decoding at plain decoding's speed instead of paying a probe per pause.

One switch can serve several calls (:func:`decode_all` shares one over its batches), so a short answer
does not pay a fresh probe: what earlier calls learnt carries over. docs/decoding.md has the arithmetic.

*Ragged batches.* Every row keeps its own positions: the cache of layer l is ``[rows, kv heads, slots,
head dim]`` where slot p holds position p of that row (no left padding, no position shift), and layer l
holds a prefix ``[0, filled[l, row])`` of each row. A call runs the rows that have positions to add to
that layer, each from its own prefix end; shorter runs are padded with queries at position 0 whose keys
are never written. The attention mask is causal by position (plus the sliding window of the layers that
have one), so slots past a row's prefix — a rejected draft, a position not filled yet — are never seen
and need no clearing. A row that finishes (EOS or ``max_new_tokens``) is removed from the batch.

*Sampling.* Token ``p`` of a row is ``argmax(probs / noise_p)`` with ``noise_p`` a vector of Exp(1)
draws, the row's ``(p - prompt length)``-th from a generator seeded with the row's seed: an exact
sample of ``probs`` (the exponential race). Draft and verifier use the same ``noise_p``; a draft is
accepted when it is the token the full model picks at that position with that noise. So the text
depends on the seed alone — not on the draft length, on when drafting switched itself off, on which
other prompts share the batch, or on the mode (speculative, dynamic at all-1.0 and exit L give the same
text) — and every token is the full model's exact sample.

The cache is written by the layers through ``SlotCache.update``; a layer call that did not write it (a
renamed keyword swallowed by ``**kwargs`` in a newer transformers) fails loudly instead of decoding
without a cache. Nothing in this file knows about Lightning or Hydra.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from sortednet.errors import SortedNetError
from sortednet.model import SortedLM

_clock = time.perf_counter  # the speculative switch's clock; a test replaces it to force both paths


def attention_windows(config, num_layers: int) -> list[int | None]:
    """The sliding window of each layer (``None``: full causal attention), as the model's own masks use it."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is None:
        return [window] * num_layers  # Mistral-style: one window (or none) for every layer
    unknown = sorted(set(types[:num_layers]) - {"full_attention", "sliding_attention"})
    if unknown:
        raise SortedNetError(
            f"layer types {unknown} of {config.model_type} are not supported by sortednet's decoder (full and "
            f"sliding-window attention are); use mode=exit, which runs Hugging Face generate"
        )
    return [window if kind == "sliding_attention" else None for kind in types[:num_layers]]


class SlotCache:
    """Keys and values of every layer, slot p of a row holding position p; the cache the layers update.

    Stored ``[rows, slots, kv heads, head dim]`` so a call's positions are written with one ``index_copy_``
    into the flattened (row, slot) axis; the layers get ``[rows, kv heads, slots, head dim]`` views.
    """

    def __init__(self, num_layers: int, rows: int, capacity: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.rows, self.capacity = rows, capacity
        self.call: _Call | None = None  # the layer call in progress
        self.written: int | None = None  # the layer whose update() ran last

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the call's real positions, return its rows' keys and values up to the call's length."""
        call = self.call
        if self.keys[layer_idx] is None:
            self.keys[layer_idx] = key_states.new_zeros((self.rows, self.capacity, *key_states.shape[1::2]))
            self.values[layer_idx] = value_states.new_zeros((self.rows, self.capacity, *value_states.shape[1::2]))
        stored = []
        for cache, new in ((self.keys[layer_idx], key_states), (self.values[layer_idx], value_states)):
            new = new.transpose(1, 2).reshape(-1, *cache.shape[2:])
            cache.view(-1, *cache.shape[2:]).index_copy_(0, call.slots, new if call.all_real else new[call.real_flat])
            rows = cache[:, : call.length] if call.every_row else cache[call.rows, : call.length]
            stored.append(rows.transpose(1, 2))
        self.written = layer_idx
        return tuple(stored)

    def keep(self, rows: torch.Tensor) -> None:
        self.keys = [None if k is None else k[rows] for k in self.keys]
        self.values = [None if v is None else v[rows] for v in self.values]
        self.rows = len(rows)


class LayerStack:
    """Hidden states, cache and per-layer prefix lengths of a batch; runs decoder layers over its rows."""

    def __init__(self, net: SortedLM, prompts: Sequence[Sequence[int]], capacity: int):
        from transformers import __version__ as transformers_version  # lazy: slow to import, only its version read

        self.net = net
        self.layers = net.decoder.layers
        config = net.lm.config
        implementation = getattr(config, "_attn_implementation", None) or "eager"
        if implementation not in ("sdpa", "eager"):
            raise SortedNetError(
                f"attn_implementation={implementation} ignores the masks sortednet's decoder gives; load the model "
                f"with attn_implementation='sdpa' (or 'eager'), or use mode=exit"
            )
        self.windows = attention_windows(config, net.num_layers)
        self.transformers_version = transformers_version
        self.device = next(net.parameters()).device
        rows, width = len(prompts), max(map(len, prompts))
        ids = torch.zeros((rows, width), dtype=torch.long, device=self.device)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(list(prompt), device=self.device)
        embedded = net.decoder.embed_tokens(ids)
        self.capacity = capacity
        self.hidden = embedded.new_zeros((rows, capacity, embedded.shape[-1]))
        self.hidden[:, :width] = embedded
        self.filled = torch.zeros((net.num_layers, rows), dtype=torch.long, device=self.device)
        self.cache = SlotCache(net.num_layers, rows, capacity)
        self.layer_evals = 0  # token x layer evaluations of real positions, for the stats

    @property
    def rows(self) -> int:
        return self.hidden.shape[0]

    def all_rows(self) -> torch.Tensor:
        return torch.arange(self.rows, device=self.device)

    def put(self, rows: Sequence[int], positions: Sequence[int], tokens: Sequence[int]) -> None:
        """The embeddings of ``tokens`` become the depth-0 hidden states of ``positions`` of ``rows``."""
        embedded = self.net.decoder.embed_tokens(torch.tensor(list(tokens), device=self.device))
        self.hidden[list(rows), list(positions)] = embedded

    def advance(self, rows: torch.Tensor, ends: torch.Tensor, start: int, stop: int) -> None:
        """Run layers ``[start, stop)`` (0-based) so each of ``rows`` holds its positions ``< ends`` in each.

        A layer takes, per row, the positions from its own prefix end to ``ends`` — the new ones and any a
        previous token skipped (which sit at exactly that layer's depth). Consecutive layers whose prefixes
        end at the same places share one plan: positions, rope, masks.
        """
        if start >= stop:
            return
        begins = self.filled[start:stop][:, rows]
        changes = (begins[1:] != begins[:-1]).any(-1).tolist()
        group = start
        for layer in range(start, stop):
            if layer + 1 < stop and not changes[layer - start]:
                continue
            plan = self._plan(rows, begins[group - start], ends)
            if plan is not None:
                for index in range(group, layer + 1):
                    self._run(index, plan)
                self.filled[group : layer + 1, plan.rows] = plan.ends
            group = layer + 1

    def _run(self, layer: int, plan: _Call) -> None:
        flat = self.hidden.view(-1, self.hidden.shape[-1])
        hidden = flat.index_select(0, plan.gather).view(*plan.positions.shape, -1)
        self.cache.call, self.cache.written = plan, None
        hidden = self.layers[layer](
            hidden, attention_mask=plan.mask(self.windows[layer]), position_ids=plan.positions,
            cache=self.cache, use_cache=True, position_embeddings=plan.rope,
        )  # fmt: skip
        if self.cache.written != layer:
            raise SortedNetError(
                f"decoder layer {layer} did not write its keys and values to sortednet's cache (transformers "
                f"{self.transformers_version} renamed the keyword?); install the tested range from pyproject.toml"
            )
        hidden = hidden.reshape(-1, hidden.shape[-1])
        flat.index_copy_(0, plan.slots, hidden if plan.all_real else hidden[plan.real_flat])
        self.layer_evals += len(plan.slots)

    def _plan(self, rows: torch.Tensor, begin: torch.Tensor, ends: torch.Tensor) -> _Call | None:
        todo = ends > begin
        if not bool(todo.all()):
            if not bool(todo.any()):
                return None
            rows, begin, ends = rows[todo], begin[todo], ends[todo]
        offsets = torch.arange(int((ends - begin).max()), device=self.device)
        positions = begin[:, None] + offsets
        real = positions < ends[:, None]
        # Padding queries sit at position 0: their mask lets them see slot 0 only, and they write nothing.
        positions = torch.where(real, positions, 0)
        rope = self.net.decoder.rotary_emb(self.hidden[:1, :1], positions)
        return _Call(rows, ends, positions, real, int(ends.max()), rope, self.capacity, len(rows) == self.rows)

    def logits(self, rows: Sequence[int], positions: Sequence[int], exit_: int) -> torch.Tensor:
        """Exit ``exit_``'s logits (float32) at ``positions`` of ``rows``, whose hidden states are at that depth."""
        hidden = self.hidden[list(rows), list(positions)]
        return self.net.head(exit_)(self.net.norm(hidden)).float()

    def crop(self, rows: Sequence[int], lengths: Sequence[int]) -> None:
        """Row ``rows[i]`` keeps its first ``lengths[i]`` positions in every layer."""
        index = list(rows)
        self.filled[:, index] = torch.minimum(self.filled[:, index], torch.tensor(list(lengths), device=self.device))

    def keep(self, rows: Sequence[int]) -> None:
        """Drop every row not in ``rows`` (finished sequences leave the batch's work)."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        self.hidden, self.filled = self.hidden[index], self.filled[:, index]
        self.cache.keep(index)


@dataclass
class _Call:
    """One plan of layer calls: rows, their padded positions, where they live in the flat (row, slot) axis,
    rope, and the attention mask per sliding window."""

    rows: torch.Tensor
    ends: torch.Tensor
    positions: torch.Tensor
    real: torch.Tensor
    length: int
    rope: tuple
    capacity: int
    every_row: bool
    masks: dict = field(default_factory=dict)

    def __post_init__(self):
        flat = (self.rows[:, None] * self.capacity + self.positions).reshape(-1)
        self.gather = flat  # padding reads slot 0 of its row
        self.real_flat = self.real.reshape(-1)
        self.all_real = bool(self.real_flat.all())
        self.slots = flat if self.all_real else flat[self.real_flat]  # where the real positions are written

    def mask(self, window: int | None) -> torch.Tensor:
        if window not in self.masks:
            keys = torch.arange(self.length, device=self.positions.device)
            query = self.positions[:, :, None]
            allowed = keys <= query  # causal by position: slots past a row's prefix are never seen
            if window is not None:
                allowed &= keys > query - window  # Hugging Face's sliding window: the last `window` positions
            dtype = self.rope[0].dtype
            additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
            self.masks[window] = additive.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
        return self.masks[window]


class _Noise:
    """One row's Exp(1) noise per generated position, drawn in position order from the row's own seed."""

    def __init__(self, seed: int, first_position: int, vocab: int, device):
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.next, self.vocab, self.device = first_position, vocab, device
        self.drawn: dict[int, torch.Tensor] = {}

    def at(self, position: int) -> torch.Tensor:
        while self.next <= position:
            noise = torch.empty(self.vocab, device=self.device).exponential_(generator=self.generator)
            self.drawn[self.next], self.next = noise, self.next + 1
        return self.drawn[position]

    def forget_before(self, position: int) -> None:
        for p in [p for p in self.drawn if p < position]:
            del self.drawn[p]


class Sampler:
    """Greedy, or temperature + top-p sampling with position-keyed noise (see the module's *Sampling*)."""

    def __init__(self, do_sample: bool, temperature: float, top_p: float):
        if do_sample and temperature <= 0:
            raise SortedNetError(f"temperature={temperature} must be > 0 when sampling")
        if not 0 < top_p <= 1:
            raise SortedNetError(f"top_p={top_p} must be in (0, 1]")
        self.do_sample, self.temperature, self.top_p = do_sample, temperature, top_p

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution tokens are drawn from (after temperature and top-p), rows of ``logits``."""
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(-1) - sorted_probs > self.top_p
            probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
        return probs

    def pick(self, logits: torch.Tensor, rows: Sequence[_Row], positions: Sequence[int]) -> list[int]:
        """The token at ``positions[i]`` of ``rows[i]`` from row i of ``logits`` (the previous position's)."""
        if not self.do_sample:
            return logits.argmax(-1).tolist()
        noise = torch.stack([row.noise.at(p) for row, p in zip(rows, positions, strict=True)])
        return (self.probs(logits) / noise).argmax(-1).tolist()  # the exponential race: an exact sample


@dataclass
class _Row:
    """One sequence of the batch: where it stands, its tokens so far, its sampling noise."""

    index: int  # in the caller's list of prompts
    length: int  # positions with a token, the pending (last emitted, not yet run) one included
    noise: _Noise | None
    tokens: list[int] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)  # dynamic: the depth each token came from
    next_drafts: int = 1  # speculative: how many tokens it drafts in its next round (0: a plain step)

    @property
    def pending(self) -> int:
        """Position of the last emitted token, the next to run through the layers."""
        return self.length - 1


class _Emitter:
    """Appends tokens to rows, calls ``on_token(prompt index, token)``, knows when a row is done."""

    def __init__(self, max_new_tokens: int, eos: int | None, on_token: Callable[[int, int], None] | None):
        self.max_new_tokens, self.eos, self.on_token = max_new_tokens, eos, on_token

    def emit(self, row: _Row, token: int) -> bool:
        """Record ``token`` as ``row``'s next; True when the row must stop."""
        row.tokens.append(token)
        row.length += 1
        if self.on_token:
            self.on_token(row.index, token)
        if row.noise is not None:
            row.noise.forget_before(row.length)
        return self.done(row)

    def done(self, row: _Row) -> bool:
        return bool(row.tokens) and (row.tokens[-1] == self.eos or len(row.tokens) >= self.max_new_tokens)

    def left(self, row: _Row) -> int:
        return self.max_new_tokens - len(row.tokens)


def _leave(stack: LayerStack, rows: list[_Row], out: _Emitter) -> list[_Row]:
    """The rows still running; finished ones are dropped from the stack."""
    keep = [i for i, row in enumerate(rows) if not out.done(row)]
    if len(keep) < len(rows) and keep:
        stack.keep(keep)
    return [rows[i] for i in keep]


def _first_tokens(stack: LayerStack, rows: list[_Row], depth: int, sampler: Sampler, out: _Emitter) -> list[_Row]:
    """The prompts' pass through layers ``< depth`` and the first token of every row."""
    ends = torch.tensor([row.length for row in rows], device=stack.device)
    stack.advance(stack.all_rows(), ends, 0, depth)
    positions = [row.length - 1 for row in rows]
    tokens = sampler.pick(stack.logits(range(len(rows)), positions, depth), rows, [p + 1 for p in positions])
    for row, token in zip(rows, tokens, strict=True):
        out.emit(row, token)
    return _leave(stack, rows, out)


def _plain_step(stack: LayerStack, rows: list[_Row], depth: int, sampler: Sampler, out: _Emitter) -> list[_Row]:
    """Every row's pending token through layers ``< depth``, and its next token from exit ``depth``."""
    positions = [row.pending for row in rows]
    stack.put(range(len(rows)), positions, [row.tokens[-1] for row in rows])
    ends = torch.tensor([p + 1 for p in positions], device=stack.device)
    stack.advance(stack.all_rows(), ends, 0, depth)
    tokens = sampler.pick(stack.logits(range(len(rows)), positions, depth), rows, [p + 1 for p in positions])
    for row, token in zip(rows, tokens, strict=True):
        out.emit(row, token)
    return _leave(stack, rows, out)


def _exit_decode(stack: LayerStack, rows: list[_Row], exit_: int, sampler: Sampler, out: _Emitter) -> dict:
    rows = _first_tokens(stack, rows, exit_, sampler, out)
    while rows:
        rows = _plain_step(stack, rows, exit_, sampler, out)
    return {}


def _speculative_round(
    stack: LayerStack, rows: list[_Row], draft_exit: int, max_draft: int, sampler: Sampler, out: _Emitter
) -> tuple[list[_Row], int, int]:
    """Every row drafts up to ``row.next_drafts`` tokens through exit E; layers >= E verify them in one call.

    Each row's newest token (the pending one, then each draft) runs through layers < E; the draft head
    proposes the next token, except after the last pass: the verifier's choice at that position is
    committed whatever a draft there would have been, so no head is spent on it. A row whose ``d``
    drafts all pass commits them plus the full model's next token (``d + 1``); otherwise the accepted
    drafts plus the full model's token where the first one erred. ``next_drafts = 0`` is a plain step.
    Each row sets its own next draft count from its own acceptance (one more after all its drafts passed,
    else as many as passed; at most ``max_draft``), so a row whose drafts fail stops paying for them while
    its neighbours draft on. Returns the rows still running, the tokens drafted and accepted, and the rows
    whose drafts stopped at a rejected one (a draft's acceptance is accepted / (accepted + rejected)).
    """
    full, E = stack.net.num_layers, draft_exit
    start = [row.pending for row in rows]
    stack.put(range(len(rows)), start, [row.tokens[-1] for row in rows])
    drafts: list[list[int]] = [[] for _ in rows]
    drafting = list(range(len(rows)))  # rows whose newest token still needs its pass through layers < E
    limit = [row.next_drafts for row in rows]
    for j in range(max(limit) + 1):
        index = torch.tensor(drafting, device=stack.device)
        stack.advance(index, torch.tensor([start[i] + j + 1 for i in drafting], device=stack.device), 0, E)
        # A row drafts on while a draft can still be committed: room for it and the verifier's token, no EOS.
        drafting = [i for i in drafting if j < limit[i] and j + 1 < out.left(rows[i]) and out.eos not in drafts[i]]
        if not drafting:
            break
        positions = [start[i] + j for i in drafting]
        tokens = sampler.pick(stack.logits(drafting, positions, E), [rows[i] for i in drafting],
                              [p + 1 for p in positions])  # fmt: skip
        stack.put(drafting, [p + 1 for p in positions], tokens)
        for i, token in zip(drafting, tokens, strict=True):
            drafts[i].append(token)
    # Verify: the pending position and every draft of every row, at depth E, through layers >= E in one call
    # per layer.
    ends = torch.tensor([s + len(d) + 1 for s, d in zip(start, drafts, strict=True)], device=stack.device)
    stack.advance(stack.all_rows(), ends, E, full)
    flat = [(i, start[i] + j) for i, d in enumerate(drafts) for j in range(len(d) + 1)]
    choices = sampler.pick(stack.logits([i for i, _ in flat], [p for _, p in flat], full),
                           [rows[i] for i, _ in flat], [p + 1 for _, p in flat])  # fmt: skip
    drafted, accepted, rejected, at = 0, 0, 0, 0
    lengths = []
    for i, (row, d) in enumerate(zip(rows, drafts, strict=True)):
        full_choice = choices[at : at + len(d) + 1]
        at += len(d) + 1
        n_ok = next((j for j, (a, b) in enumerate(zip(d, full_choice, strict=False)) if a != b), len(d))
        drafted, accepted, rejected = drafted + len(d), accepted + n_ok, rejected + (n_ok < len(d))
        row.next_drafts = min(max_draft, n_ok + 1 if n_ok == len(d) else n_ok)
        lengths.append(start[i] + n_ok + 1)  # the pending token and the accepted drafts are right in every layer
        for token in d[:n_ok] + full_choice[n_ok : n_ok + 1]:
            if out.emit(row, token):
                break
    stack.crop(range(len(rows)), lengths)
    return _leave(stack, rows, out), drafted, accepted, rejected


class DraftSwitch:
    """Whether a speculative decode's next step drafts or runs plainly: the rules of the module's *The switch*.

    Which path runs never changes the text (both commit the full model's token at every position), only the
    time it takes.
    """

    JUDGED_AFTER = 4  # rounds between judgements of a stretch: one round's time is too noisy to judge on
    YARDSTICK_STEPS = 2  # timed plain steps before the first judgement, when no plain timing exists yet
    BASE_PAUSE = 16  # plain steps after a stretch that lost ...
    MAX_PAUSE = 512  # ... doubled per further loss up to this: re-probing then costs < 1% at acceptance 0
    MIN_EVIDENCE = 16  # judged draft positions (accepted + rejected) before a draft exit can be retired
    MAX_DRAFTS = 16  # the draft lengths the ceiling considers

    def __init__(self, cost: float = 0.0):
        self.cost = cost  # a draft pass's cost as a share of a plain step's: its layers over all (a lower bound)
        self.plain_seconds: float | None = None  # per committed token of plain steps, a moving average
        self.pause = 0  # plain steps left before drafting again
        self.next_pause = self.BASE_PAUSE
        self.fresh = True  # the next round starts a stretch (nothing drafted since the last plain step)
        self.probes = 0  # stretches started
        self.judged_accepted = self.judged_rejected = 0  # over every stretch, for the acceptance estimate
        self.retired = False  # drafting cannot pay with this draft exit: plain decoding from now on
        self._restart()

    def _restart(self) -> None:
        """A fresh judgement window: seconds, tokens, rounds, drafted and accepted since it began."""
        self.seconds, self.tokens, self.rounds, self.drafted, self.accepted = 0.0, 0, 0, 0, 0

    @property
    def drafting(self) -> bool:
        return self.pause == 0 and not self.retired

    def ceiling(self) -> float:
        """The best speed-up over plain decoding that drafting could reach, optimistically: the per-position
        acceptance estimated as (accepted + 1) / (accepted + rejected + 2), drafts passing independently, and a
        round of k drafts costing ``1 + k * cost`` plain steps (the verification as one plain step, the draft
        head free). The best over draft lengths 1..MAX_DRAFTS of expected tokens per round over its cost."""
        a = (self.judged_accepted + 1) / (self.judged_accepted + self.judged_rejected + 2)
        return max((1 - a ** (k + 1)) / (1 - a) / (1 + k * self.cost) for k in range(1, self.MAX_DRAFTS + 1))

    @property
    def probing(self) -> bool:
        """The next round starts a stretch: one draft per row."""
        return self.drafting and self.fresh

    def plain_step(self, seconds: float, tokens: int) -> None:
        per_token = seconds / max(tokens, 1)
        self.plain_seconds = per_token if self.plain_seconds is None else 0.7 * self.plain_seconds + 0.3 * per_token
        self.pause = max(self.pause - 1, 0)
        self.fresh = True

    def round(self, seconds: float, tokens: int, drafted: int, accepted: int, rejected: int = 0) -> None:
        """Record a speculative round and judge the stretch."""
        first, self.fresh = self.fresh, False
        self.probes += first
        self.seconds, self.tokens, self.rounds = self.seconds + seconds, self.tokens + tokens, self.rounds + 1
        self.drafted, self.accepted = self.drafted + drafted, self.accepted + accepted
        self.judged_accepted, self.judged_rejected = self.judged_accepted + accepted, self.judged_rejected + rejected
        if first and drafted and not accepted:
            self._lose()  # one token per row for more work than a plain step: no clock needed to see it lost
        elif self.rounds >= self.JUDGED_AFTER:
            if self.plain_seconds is None:
                self.pause = self.YARDSTICK_STEPS  # measure plain decoding, then judge a fresh window
                self._restart()
            elif not self.accepted or self.seconds / max(self.tokens, 1) > self.plain_seconds:
                self._lose()
            else:
                self.next_pause = self.BASE_PAUSE
                self._restart()

    def _lose(self) -> None:
        self.pause, self.next_pause = self.next_pause, min(2 * self.next_pause, self.MAX_PAUSE)
        evidence = self.judged_accepted + self.judged_rejected
        self.retired = evidence >= self.MIN_EVIDENCE and self.ceiling() < 1.0
        self._restart()


def _speculative_decode(
    stack: LayerStack,
    rows: list[_Row],
    draft_exit: int,
    sampler: Sampler,
    out: _Emitter,
    max_draft: int,
    switch: DraftSwitch,
) -> dict:
    full = stack.net.num_layers
    switch.cost = draft_exit / full
    rows = _first_tokens(stack, rows, full, sampler, out)
    drafted, accepted, plain_steps, plain_tokens, probes = 0, 0, 0, 0, switch.probes
    while rows:
        began, before = _clock(), sum(len(row.tokens) for row in rows)
        if not switch.drafting:  # plain decoding, timed: the yardstick drafting is judged against
            committed = len(rows)
            rows = _plain_step(stack, rows, full, sampler, out)
            plain_steps, plain_tokens = plain_steps + 1, plain_tokens + committed
            switch.plain_step(_clock() - began, committed)
            continue
        if switch.probing:
            for row in rows:
                row.next_drafts = 1
        running = rows
        rows, n_drafted, n_accepted, n_rejected = _speculative_round(stack, rows, draft_exit, max_draft, sampler, out)
        drafted, accepted = drafted + n_drafted, accepted + n_accepted
        committed = sum(len(row.tokens) for row in running) - before
        switch.round(_clock() - began, committed, n_drafted, n_accepted, n_rejected)
    return {"drafted": drafted, "accepted": accepted, "acceptance": accepted / max(drafted, 1),
            "plain_steps": plain_steps, "plain_tokens": plain_tokens, "probes": switch.probes - probes,
            "retired": switch.retired}  # fmt: skip


def _dynamic_decode(
    stack: LayerStack, rows: list[_Row], exits: list[int], thresholds: list[float], sampler: Sampler, out: _Emitter
) -> dict:
    full = stack.net.num_layers
    all_rows = rows
    # An exit at 1.0 can never emit: trying it would only pay its head (and split the layer calls around it).
    tried = [(e, t) for e, t in zip(exits, thresholds, strict=False) if t < 1.0]
    if not tried:  # early exit is off: plain decoding, every token from L
        _exit_decode(stack, rows, full, sampler, out)
        return {"mean_exit": full, "exit_per_token": [[full] * len(row.tokens) for row in all_rows]}
    for row in rows:
        row.exits.append(full)  # the first token comes from the prompt's pass through every layer
    rows = _first_tokens(stack, rows, full, sampler, out)
    while rows:
        positions = [row.pending for row in rows]
        stack.put(range(len(rows)), positions, [row.tokens[-1] for row in rows])
        going, layer, tokens = list(range(len(rows))), 0, [0] * len(rows)
        for e, threshold in [*tried, (full, None)]:
            index = torch.tensor(going, device=stack.device)
            # Positions a row skipped at these layers join its new token's run (they sit at their depth).
            stack.advance(index, torch.tensor([positions[i] + 1 for i in going], device=stack.device), layer, e)
            layer = e
            logits = stack.logits(going, [positions[i] for i in going], e)
            if threshold is None:
                sure = [True] * len(going)
            else:
                sure = (torch.softmax(logits, -1).amax(-1) >= threshold).tolist()
            chosen = [i for i, s in zip(going, sure, strict=True) if s]
            if chosen:
                picked = sampler.pick(logits[torch.tensor(sure)], [rows[i] for i in chosen],
                                      [positions[i] + 1 for i in chosen])  # fmt: skip
                for i, token in zip(chosen, picked, strict=True):
                    tokens[i] = token
                    rows[i].exits.append(e)
            going = [i for i, s in zip(going, sure, strict=True) if not s]
            if not going:
                break
        for row, token in zip(rows, tokens, strict=True):
            out.emit(row, token)
        rows = _leave(stack, rows, out)
    depths = [e for row in all_rows for e in row.exits[: len(row.tokens)]]
    return {"mean_exit": sum(depths) / max(len(depths), 1),
            "exit_per_token": [row.exits[: len(row.tokens)] for row in all_rows]}  # fmt: skip


def generate_batch(
    net: SortedLM,
    prompts: Sequence[Sequence[int]],
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
    seed: int | Sequence[int] | None = None,
    on_token: Callable[[int, int], None] | None = None,
    max_draft: int = 8,
    draft_switch: DraftSwitch | None = None,
) -> tuple[list[list[int]], dict]:
    """New tokens after each prompt, decoded together, and the batch's stats (tokens, seconds, tokens_per_s,
    layer_evals_per_token; drafted, accepted, acceptance, plain_steps and plain_tokens (decoded while drafting
    was switched off) and probes (stretches of drafting begun) for speculative; mean_exit and exit_per_token
    per prompt for dynamic).

    ``exits`` (dynamic) are the exits, shallow to deep, ending at L; ``thresholds`` has one value in (0, 1]
    per exit below L: a token exits at the first exit whose top-1 probability reaches its threshold, and an
    exit at 1.0 is not tried at all (all at 1.0: plain decoding). ``draft_switch`` (speculative) carries what
    earlier calls learnt about whether drafting pays (see the module's *The switch*); ``None``: a fresh one.
    ``seed`` is one seed for every row or one per row; a row's text depends on its prompt and seed only.
    ``on_token(prompt index, token)`` is called for every token as it is committed.
    """
    L = net.num_layers
    if not prompts:
        raise SortedNetError("no prompt given; give at least one")
    if any(not p for p in prompts):
        raise SortedNetError("the prompt is empty; give some text")
    seeds = [0 if seed is None else seed] * len(prompts) if seed is None or isinstance(seed, int) else list(seed)
    if len(seeds) != len(prompts):
        raise SortedNetError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one seed or one per prompt")
    if max_new_tokens < 1:
        raise SortedNetError(f"max_new_tokens={max_new_tokens} must be at least 1")
    sampler = Sampler(do_sample, temperature, top_p)
    if mode == "exit":
        exit_ = L if exit is None else exit
        if not 1 <= exit_ <= L:
            raise SortedNetError(f"exit={exit_} is outside [1, {L}]")
    elif mode in ("speculative", "dynamic") and exit not in (None, L):
        raise SortedNetError(f"mode={mode} always ends at the last layer {L}; leave exit unset")
    elif mode == "speculative":
        if draft_exit is None or not 1 <= draft_exit < L:
            raise SortedNetError(f"draft_exit={draft_exit} must be in [1, {L - 1}] (below the last layer {L})")
    elif mode == "dynamic":
        exits = list(exits or [])
        if not exits or exits[-1] != L or exits != sorted(set(exits)) or exits[0] < 1:
            raise SortedNetError(f"dynamic mode needs the sorted exits to try, ending at {L}; got {exits}")
        thresholds = list(thresholds or [])
        if len(thresholds) != len(exits) - 1 or not all(0 < t <= 1 for t in thresholds):
            raise SortedNetError(
                f"thresholds={thresholds}: give {len(exits) - 1} values in (0, 1], one per exit {exits[:-1]}"
            )
    else:
        raise SortedNetError(f"unknown mode {mode!r}; use exit, speculative or dynamic")
    device = next(net.parameters()).device
    vocab = net.lm_head.out_features
    rows = [
        _Row(i, len(p), _Noise(s, len(p), vocab, device) if do_sample else None)
        for i, (p, s) in enumerate(zip(prompts, seeds, strict=True))
    ]
    out = _Emitter(max_new_tokens, eos_token_id, on_token)
    start = time.perf_counter()
    with torch.inference_mode():
        # Slots: the longest prompt, every new token, and the drafts a round may run past the last one.
        stack = LayerStack(net, prompts, max(map(len, prompts)) + max_new_tokens + max_draft + 1)
        if mode == "exit":
            stats = _exit_decode(stack, rows, exit_, sampler, out)
        elif mode == "speculative":
            switch = DraftSwitch() if draft_switch is None else draft_switch
            stats = _speculative_decode(stack, rows, draft_exit, sampler, out, max_draft, switch)
        else:
            stats = _dynamic_decode(stack, rows, exits, thresholds, sampler, out)
    seconds = time.perf_counter() - start
    tokens = sum(len(row.tokens) for row in rows)
    stats.update(tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds)
    stats["layer_evals_per_token"] = stack.layer_evals / max(tokens, 1)
    return [row.tokens for row in rows], stats


def generate(
    net: SortedLM,
    input_ids: Sequence[int],
    *,
    on_token: Callable[[int], None] | None = None,
    **settings,
) -> tuple[list[int], dict]:
    """New tokens after ``input_ids`` (one sequence) and stats: :func:`generate_batch` with one prompt,
    ``on_token(token)`` and ``exit_per_token`` (dynamic) that of the one sequence."""
    if isinstance(settings.get("seed"), Sequence):
        raise SortedNetError("one sequence takes one seed; use generate_batch for a seed per prompt")
    stream = None if on_token is None else (lambda _row, token: on_token(token))
    (tokens,), stats = generate_batch(net, [list(input_ids)], on_token=stream, **settings)
    if "exit_per_token" in stats:
        stats["exit_per_token"] = stats["exit_per_token"][0]
    return tokens, stats


def decode_all(
    net: SortedLM, prompts: Sequence[list[int]], max_new_tokens: int, eos: int | None, batch_size: int = 1, **mode
) -> tuple[list[list[int]], list[dict]]:
    """Outputs per prompt and stats per batch of one decoding mode over ``prompts``, ``batch_size`` at a time.

    Speculative batches share one :class:`DraftSwitch`: a batch starts where the previous one left the
    switch, so when drafting does not pay, short answers do not each pay a probe of their own."""
    outputs, stats = [], []
    if mode.get("mode") == "speculative":
        mode.setdefault("draft_switch", DraftSwitch())
    for start in range(0, len(prompts), batch_size):
        tokens, s = generate_batch(
            net, prompts[start : start + batch_size], max_new_tokens=max_new_tokens, eos_token_id=eos, **mode
        )
        outputs += tokens
        stats.append(s)
    return outputs, stats
