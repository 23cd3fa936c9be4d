"""TriviaQA for closed-book question answering: reading, checking, and the question → answer training rows.

Three row layouts are read, from a ``.json`` (a list, or JSON Lines as ``datasets``' ``to_json`` writes them)
or ``.jsonl`` file:

- the Hugging Face ``trivia_qa`` layout (configs ``rc.nocontext``, ``unfiltered.nocontext``, ...): ``question``
  and ``answer`` = ``{"value": ..., "aliases": [...], "normalized_aliases": [...], ...}``;
- llm-foundry's (its ``triviaqa_sm_sub.jsonl``): ``context`` = ``"Question: ...\\nAnswer:"``, ``answer`` (a
  string, the training target) and ``aliases``; the question is the text between ``Question:`` and ``Answer:``;
- a plain one: ``question`` and ``answers`` = a list of strings, the first being the training target.

A hub id (``mandarjoshi/trivia_qa``) is loaded with ``datasets.load_dataset`` when the hub is reachable.
Every source becomes *records* ``{"question", "answers", "id"}``: ``answers`` lists the accepted answers, the
training target first (the HF layout's ``value``, then its aliases); ``id`` is the ``question_id`` or ``None``.
"""

from __future__ import annotations

import re

from sortednet.data.rows import read_rows
from sortednet.errors import SortedNetError
from sortednet.hub import hub_reachable, looks_local

DEFAULT_HUB_ID = "mandarjoshi/trivia_qa"
DEFAULT_CONFIG = "unfiltered.nocontext"
"""The hub config read for a hub id: unique questions, no evidence documents (closed book)."""
LAYOUTS = (
    "Hugging Face trivia_qa {question, answer: {value, aliases}}, "
    "llm-foundry {context: 'Question: ... Answer:', answer, aliases}, or {question, answers: [...]}"
)
# llm-foundry's context: the question between "Question:" and the final "Answer:" on its own line.
_FOUNDRY_CONTEXT = re.compile(r"\s*Question:(?P<question>.*)\n\s*Answer:\s*", re.DOTALL)


def is_triviaqa_hub_id(path: str) -> bool:
    """Whether ``path`` names TriviaQA on the hub (``trivia_qa``, ``mandarjoshi/trivia_qa``) rather than a file."""
    return not looks_local(path) and re.sub(r"[^a-z]", "", path.rsplit("/", 1)[-1].lower()) == "triviaqa"


def looks_like_triviaqa(rows: list) -> bool:
    """Whether rows read from a file are TriviaQA rows (a question or answers, no instruction)."""
    first = rows[0] if rows else None
    return (
        isinstance(first, dict)
        and "instruction" not in first
        and bool({"question", "context", "answer", "answers"} & set(first))
    )


def read_triviaqa(source: str, split: str = "validation", config: str = DEFAULT_CONFIG) -> list[dict]:
    """Checked records of a TriviaQA file or hub id (``split`` and ``config`` apply to hub ids only)."""
    if looks_local(source):
        return parse_triviaqa(read_rows(source), source)
    return parse_triviaqa(_read_hub(source, split, config), f"{source} ({config}, {split})")


def _read_hub(hub_id: str, split: str, config: str) -> list[dict]:
    import datasets  # lazy: about 2 s to import, for hub data sets only

    if not hub_reachable():
        raise SortedNetError(
            f"cannot load TriviaQA {hub_id!r}: the hub is unreachable; save it where the hub is reachable "
            f"(datasets.load_dataset({hub_id!r}, {config!r}, split={split!r}).to_json('triviaqa.jsonl')) "
            f"and pass the local file"
        )
    try:
        return datasets.load_dataset(hub_id, config, split=split).to_list()
    except Exception as error:  # datasets raises many types for "unreachable" / "no such data set or config"
        raise SortedNetError(
            f"cannot load TriviaQA {hub_id!r} (config {config!r}, split {split!r}) from the hub "
            f"({type(error).__name__}); save it where the hub is reachable and pass the local .jsonl file"
        ) from error


def _strings(value, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SortedNetError(f"{what} is a {type(value).__name__}, expected a list of strings")
    return value


def parse_triviaqa(rows: list, source: str) -> list[dict]:
    """Records ``{"question", "answers", "id"}`` from rows in either layout; one-line errors name row and field."""
    records = []
    for index, row in enumerate(rows):
        where = f"row {index} of {source}"
        if not isinstance(row, dict):
            raise SortedNetError(f"{where} is a {type(row).__name__}, expected an object")
        if "question" not in row and "context" in row:
            records.append(_foundry_record(row, where))
            continue
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            problem = "has no 'question' field" if "question" not in row else "has an empty or non-text 'question'"
            raise SortedNetError(f"{where} {problem}; every TriviaQA row needs a question (layouts read: {LAYOUTS})")
        if "answer" in row:
            answer = row["answer"]
            if not isinstance(answer, dict) or "value" not in answer:
                raise SortedNetError(f"{where} has no 'answer.value' field; expected answer = {{value, aliases}}")
            value = answer["value"]
            if not isinstance(value, str) or not value.strip():
                raise SortedNetError(
                    f"{where} has an empty 'answer.value' (TriviaQA's test split has no answers); "
                    f"use the train or validation split"
                )
            answers = [value, *_strings(answer.get("aliases") or [], f"{where}: 'answer.aliases'")]
        elif "answers" in row:
            answers = _strings(row["answers"], f"{where}: 'answers'")
            if not answers or not answers[0].strip():
                raise SortedNetError(f"{where} has an empty 'answers' list; give at least one answer")
        else:
            raise SortedNetError(
                f"{where} has no 'answer' or 'answers' field; every TriviaQA row needs its answers "
                f"(layouts read: {LAYOUTS})"
            )
        records.append(_record(question, answers, row.get("question_id")))
    if not records:
        raise SortedNetError(f"{source} holds no TriviaQA rows")
    return records


def _record(question: str, answers: list[str], id_) -> dict:
    return {"question": question, "answers": list(dict.fromkeys(a for a in answers if a.strip())), "id": id_}


def _foundry_record(row: dict, where: str) -> dict:
    """A row of llm-foundry's layout: ``context`` "Question: ...\\nAnswer:", ``answer`` and ``aliases``."""
    context = row["context"]
    match = _FOUNDRY_CONTEXT.fullmatch(context) if isinstance(context, str) else None
    if match is None or not match["question"].strip():
        raise SortedNetError(
            f"{where}: 'context' is not 'Question: <question>' followed by a line 'Answer:' (llm-foundry's layout); "
            f"fix the row (layouts read: {LAYOUTS})"
        )
    answer = row.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise SortedNetError(f"{where} has no text 'answer' (llm-foundry's layout: context, answer, aliases)")
    return _record(
        match["question"].strip(), [answer, *_strings(row.get("aliases") or [], f"{where}: 'aliases'")], None
    )


def to_instruction_rows(records: list[dict]) -> list[dict]:
    """Instruction rows for the Alpaca pipeline: the question is the instruction, the first answer the output.

    The output starts with a space: the prompt ends in ``Answer:`` and the space belongs to the answer, so the
    prompt's tokens stay a prefix of the whole example's tokens (the label mask relies on that).
    """
    return [
        {"instruction": r["question"].strip(), "input": "", "output": " " + r["answers"][0].strip()} for r in records
    ]


def training_rows(path: str) -> list:
    """The rows behind ``data.path``: Alpaca rows as they are, a TriviaQA source as question → answer rows."""
    if is_triviaqa_hub_id(path):
        return to_instruction_rows(read_triviaqa(path, split="train"))
    rows = read_rows(path)
    if looks_like_triviaqa(rows):
        return to_instruction_rows(parse_triviaqa(rows, path))
    first = rows[0] if rows else None
    if isinstance(first, dict) and "instruction" not in first:
        raise SortedNetError(
            f"row 0 of {path} has the fields {sorted(first)}, a layout sortednet does not read; "
            f"Alpaca {{instruction, input, output}} or TriviaQA: {LAYOUTS}"
        )
    return rows
