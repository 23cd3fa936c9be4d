"""Pairwise judging of two answer sets by a PandaLM-style judge, in both response orders.

PandaLM (arXiv 2306.05087, WeOpenML/PandaLM) is a LLaMA-7B fine-tuned to compare two responses to one
instruction. Its prompt names the task, gives the instruction (and input), the two responses and ends in
``### Evaluation:``; the judge then writes its verdict (``1``, ``2`` or ``Tie``) on the first line,
followed by ``### Reason:`` and ``### Reference:`` sections. Judges are position-biased, so every pair is
judged twice, once with each answer set as ``Response 1``, and both verdicts count.

Score of answer set A against answer set B (as in the SoFT paper): ``(wins - losses) / total`` where
``total`` counts only the parseable verdicts. A verdict the judge did not write in the trained format is
*unparseable*: it is neither a tie nor a loss, and is reported with its own count and rate.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from sortednet.errors import SortedNetError
from sortednet.eval.exits import greedy_answers
from sortednet.hub import load_causal_lm, load_tokenizer
from sortednet.model import SortedLM

# The two headers of the released judge's prompt (the training format; the judge relies on it verbatim).
HEADER_WITH_INPUT = (
    "Below are two responses for a given task. The task is defined by the Instruction with an Input that "
    "provides further context. Evaluate the responses and generate a reference answer for the task."
)
HEADER_WITHOUT_INPUT = (
    "Below are two responses for a given task. The task is defined by the Instruction. "
    "Evaluate the responses and generate a reference answer for the task."
)
# Special-token text that may survive in answer files written by other tools; PandaLM removes such markers
# from responses before judging.
SPECIAL_MARKERS = ("<s>", "</s>", "<unk>", "<pad>", "[PAD]", "[UNK]", "<|endoftext|>")
OUTCOMES = ("win", "loss", "tie", "unparseable")


def _clean_response(text: str) -> str:
    for marker in SPECIAL_MARKERS:
        text = text.replace(marker, "")
    return text.strip()


def build_prompt(instruction: str, input: str, response_1: str, response_2: str) -> str:
    """The PandaLM judge prompt for one pair of responses.

    Layout: a header sentence, then ``### Instruction:``, ``### Input:`` (only when ``input`` is non-empty;
    the header then mentions the Input too), ``### Response 1:``, ``### Response 2:`` and ``### Evaluation:``,
    sections separated by a blank line, each title followed by a newline and its text. The prompt ends with
    ``"### Evaluation:\\n"``, where the judge's verdict starts. Responses are stripped of surrounding
    whitespace and of special-token text (:data:`SPECIAL_MARKERS`); instruction and input are kept as given.
    """
    sections = [HEADER_WITH_INPUT if input else HEADER_WITHOUT_INPUT, f"### Instruction:\n{instruction}"]
    if input:
        sections.append(f"### Input:\n{input}")
    sections += [
        f"### Response 1:\n{_clean_response(response_1)}",
        f"### Response 2:\n{_clean_response(response_2)}",
        "### Evaluation:\n",
    ]
    return "\n\n".join(sections)


def parse_verdict(text: str) -> str | None:
    """The judge's verdict: ``"1"``, ``"2"``, ``"tie"``, or ``None`` when it is not in the trained format.

    Accepted: after skipping leading whitespace (spaces, newlines), the first line, with its trailing
    whitespace removed, is exactly ``1``, ``2`` or ``tie`` in any letter case (PandaLM writes ``Tie``).
    Everything else is ``None``: empty or blank text, ``Response 1``, ``1.``, ``1 is better``, ``tie.``,
    ``3``, ``12`` and so on. What follows the first line (the reason and reference answer) is ignored.
    """
    lines = text.lstrip().splitlines()
    if not lines:
        return None
    first = lines[0].rstrip()
    if first in ("1", "2"):
        return first
    return "tie" if first.lower() == "tie" else None


def outcome(verdict: str | None, a_first: bool) -> str:
    """A verdict seen from answer set A: ``win``, ``loss``, ``tie`` or ``unparseable``.

    ``a_first`` says whether A was ``Response 1`` (else it was ``Response 2``).
    """
    if verdict is None:
        return "unparseable"
    if verdict == "tie":
        return "tie"
    return "win" if verdict == ("1" if a_first else "2") else "loss"


def score(outcomes: Iterable[str | Mapping]) -> dict:
    """Counts and score of a list of outcomes (strings from :data:`OUTCOMES`, or records with an ``outcome``).

    Keys: ``wins``, ``losses``, ``ties``, ``unparseable``; ``total`` = wins + losses + ties, the parseable
    verdicts (both orders of a pair count separately, so up to 2 per item); ``judgements`` = every verdict,
    parseable or not; ``unparseable_rate`` = unparseable / judgements; ``score`` = (wins - losses) / total,
    in [-1, 1]. ``score`` is NaN when nothing parsed, ``unparseable_rate`` when there were no verdicts.
    """
    names = [o["outcome"] if isinstance(o, Mapping) else o for o in outcomes]
    unknown = sorted(set(names) - set(OUTCOMES))
    if unknown:
        raise SortedNetError(f"unknown outcomes {unknown}; each outcome must be one of {list(OUTCOMES)}")
    counts = Counter(names)
    wins, losses, ties, unparseable = (counts[name] for name in OUTCOMES)
    total = wins + losses + ties
    return {
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "total": total,
        "unparseable": unparseable,
        "judgements": len(names),
        "unparseable_rate": unparseable / len(names) if names else math.nan,
        "score": (wins - losses) / total if total else math.nan,
    }


def check_items(items: Sequence[Mapping]) -> list[Mapping]:
    if not items:
        raise SortedNetError(
            "the instruction set is empty; give at least one {instruction, input} record (PandaLM's test set has 170)"
        )
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("instruction"), str):
            raise SortedNetError(f"instruction set row {i} has no text 'instruction'; each row needs one")
    return list(items)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def answer_texts(answers: Sequence[str | Mapping], items: Sequence[Mapping], name: str) -> list[str]:
    """The answer strings of one answer set, checked against the instruction set.

    Records (as ``evaluate suite=generate`` writes them) must answer the same instruction (and input, when
    the record has one) as the item in the same row.
    """
    if len(answers) != len(items):
        raise SortedNetError(
            f"answer set {name!r} has {len(answers)} answers for {len(items)} instructions; generate every "
            f"answer set from the same instruction set"
        )
    texts = []
    for i, (answer, item) in enumerate(zip(answers, items, strict=True)):
        if isinstance(answer, str):
            texts.append(answer)
            continue
        if not isinstance(answer, Mapping) or not isinstance(answer.get("output"), str):
            raise SortedNetError(
                f"answer set {name!r} row {i} is neither a string nor a record with a text 'output'; "
                f"give the answer records written by `evaluate suite=generate`"
            )
        if answer.get("instruction") != item["instruction"] or (
            "input" in answer and (answer["input"] or "") != (item.get("input") or "")
        ):
            raise SortedNetError(
                f"answer set {name!r} row {i} answers {_short(answer.get('instruction'))!r} but the instruction "
                f"set's row {i} is {_short(item['instruction'])!r}; generate the answers from the same "
                f"instruction set, in the same order"
            )
        texts.append(answer["output"])
    return texts


def _judge_texts(judge, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """The judge's greedy continuation of each prompt, in order (the full model through the shared
    exit-K decoder; prompts are batched longest first so each batch holds prompts of similar length)."""
    ids = tokenizer(prompts)["input_ids"]
    positions = getattr(judge.config, "max_position_embeddings", None)
    longest = max(map(len, ids))
    if positions and longest + max_new_tokens > positions:
        raise SortedNetError(
            f"the longest judge prompt is {longest} tokens, which with max_new_tokens={max_new_tokens} exceeds "
            f"the judge's {positions} positions; generate shorter answers or lower the judge's max_new_tokens"
        )
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    net = SortedLM(judge)
    texts = greedy_answers(net, tokenizer, [ids[i] for i in order], net.num_layers, max_new_tokens, batch_size)
    in_order = [""] * len(ids)
    for i, text in zip(order, texts, strict=True):
        in_order[i] = text
    return in_order


def judge_pair_sets(
    judge,
    tokenizer,
    items: Sequence[Mapping],
    answers_a: Sequence[str | Mapping],
    answers_b: Sequence[str | Mapping],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    names: tuple[str, str] = ("a", "b"),
) -> list[dict]:
    """Judge answer set A against answer set B on every item, in both orders, greedily.

    ``items`` are records with ``instruction`` and optional ``input``; ``answers_a`` / ``answers_b`` hold one
    answer per item, as strings or as answer records (``instruction``, ``input``, ``output``, ...) whose
    instruction must match the item's. ``judge`` is a Hugging Face causal LM of the LLaMA family (as
    PandaLM-7B is) and ``tokenizer`` its tokenizer, with a pad or eos token (see :func:`load_judge`).
    The verdict is on the judge's first line, so a small ``max_new_tokens`` suffices for the score; a larger
    one keeps more of the judge's reason and reference answer in ``raw``. ``names`` name the two answer
    sets in error messages.

    Returns two records per item, item by item, A as ``Response 1`` first: ``item`` (row index),
    ``order`` (``"ab"``: A is Response 1; ``"ba"``: B is Response 1), ``instruction``, ``input``, ``raw``
    (the judge's text), ``verdict`` (:func:`parse_verdict`) and ``outcome`` (for A, see :func:`outcome`).
    """
    items = check_items(items)
    texts_a = answer_texts(answers_a, items, names[0])
    texts_b = answer_texts(answers_b, items, names[1])
    prompts = []
    for item, a, b in zip(items, texts_a, texts_b, strict=True):
        instruction, input_ = item["instruction"], item.get("input") or ""
        prompts += [build_prompt(instruction, input_, a, b), build_prompt(instruction, input_, b, a)]
    raw = _judge_texts(judge, tokenizer, prompts, batch_size, max_new_tokens)
    records = []
    for k, text in enumerate(raw):
        item, a_first = items[k // 2], k % 2 == 0
        verdict = parse_verdict(text)
        records.append(
            {
                "item": k // 2,
                "order": "ab" if a_first else "ba",
                "instruction": item["instruction"],
                "input": item.get("input") or "",
                "raw": text,
                "verdict": verdict,
                "outcome": outcome(verdict, a_first),
            }
        )
    return records


def load_judge(path_or_id: str, device="cpu", *, dtype: str = "float32", cache_dir=None):
    """The judge model (eval mode, on ``device``) and its tokenizer, ready for left-padded batches.

    Loads with :func:`sortednet.hub.load_causal_lm` / :func:`~sortednet.hub.load_tokenizer` (a hub id or a
    local directory). The tokenizer needs a pad token for batching: without one its eos token is used; with
    neither this is a :class:`SortedNetError`. ``padding_side`` is set to ``left``.
    """
    tokenizer = load_tokenizer(path_or_id, cache_dir)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise SortedNetError(
                f"judge tokenizer at {path_or_id} has neither pad nor eos token; give it one (set "
                f"tokenizer.pad_token and save_pretrained it) or pick a judge whose tokenizer has them"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    judge = load_causal_lm(path_or_id, dtype=dtype, cache_dir=cache_dir).to(device).eval()
    return judge, tokenizer
