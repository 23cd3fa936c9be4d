"""Prompt styles, in a registry so a checkpoint can name the one it was trained with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sortednet.errors import SortedNetError


@dataclass(frozen=True)
class PromptStyle:
    """How an instruction (and optional input) becomes the text the model continues."""

    with_input: str
    without_input: str

    def format(self, instruction: str, input: str = "") -> str:
        if input:
            return self.with_input.format(instruction=instruction, input=input)
        return self.without_input.format(instruction=instruction)

    def end_of_response(self, tokenizer) -> str:
        """The text that closes a training target: the tokenizer's EOS."""
        return tokenizer.eos_token


# The Stanford Alpaca templates, character for character; the response follows "### Response:" directly.
ALPACA = PromptStyle(
    with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    without_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
)

# Closed-book question answering (TriviaQA). The answer follows "Answer:" after a space that belongs to the answer
# (the training target is " " + answer), so the prompt's tokens are a prefix of the example's tokens.
TRIVIAQA = PromptStyle(
    with_input="{input}\n\nQuestion: {instruction}\nAnswer:",
    without_input="Question: {instruction}\nAnswer:",
)

# The instruction alone, verbatim: for rows whose instruction already is the whole prompt (a judge's prompt, as
# sortednet.eval.pandalm.build_prompt writes it). The input, if any, is not shown.
PLAIN = PromptStyle(with_input="{instruction}", without_input="{instruction}")

PROMPT_STYLES: dict[str, PromptStyle] = {"alpaca": ALPACA, "triviaqa": TRIVIAQA, "plain": PLAIN}
CHAT = "chat"
_PROBE = "\x00sortednet-probe\x00"  # an answer no template contains, to find where the assistant turn ends


class ChatStyle:
    """The tokenizer's own chat template: the instruction (a blank line, then the input, if any) is the user
    turn, the prompt ends with the template's generation prompt, and a training target is the answer plus the
    template's end-of-turn text. ``format`` returns text that the tokenizer encodes exactly as
    ``apply_chat_template(..., tokenize=True)`` would (a BOS the template writes and the tokenizer adds again
    is written once)."""

    name = CHAT

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise SortedNetError(
                f"data.prompt_style=chat needs a tokenizer with a chat template, and {type(tokenizer).__name__} "
                f"({getattr(tokenizer, 'name_or_path', '?')}) has none; use data.prompt_style=alpaca"
            )
        self.tokenizer = tokenizer
        # A template's identity, for cache keys and answer files (the rendered text of a probe conversation).
        self.with_input = self.without_input = self._render(_PROBE, generation_prompt=True)

    def _messages(self, instruction: str, input: str = "") -> list[dict]:
        return [{"role": "user", "content": f"{instruction}\n\n{input}" if input else instruction}]

    def _render(self, instruction: str, input: str = "", answer: str | None = None, generation_prompt=False):
        messages = self._messages(instruction, input)
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        bos = self.tokenizer.bos_token
        if bos and text.startswith(bos) and self.tokenizer("")["input_ids"][:1] == [self.tokenizer.bos_token_id]:
            text = text[len(bos) :]  # the tokenizer adds it back
        return text

    def format(self, instruction: str, input: str = "") -> str:
        return self._render(instruction, input, generation_prompt=True)

    def end_of_response(self, tokenizer) -> str:
        """What the template writes after the assistant's answer, up to its end of turn (trailing blanks cut)."""
        prompt = self._render(_PROBE, generation_prompt=True)
        whole = self._render(_PROBE, answer="answer")
        if not whole.startswith(prompt + "answer"):
            raise SortedNetError(
                "this chat template does not continue its generation prompt with the answer; "
                "use data.prompt_style=alpaca"
            )
        return whole[len(prompt + "answer") :].rstrip() or tokenizer.eos_token


def template_record(name: str, style: PromptStyle | ChatStyle) -> dict:
    """What an exported model's ``prompt_style.json`` holds: the template strings, or for ``chat`` only the
    name (the template itself travels in the tokenizer's files)."""
    if isinstance(style, ChatStyle):
        return {"name": CHAT}
    return {"name": name, "with_input": style.with_input, "without_input": style.without_input}


def get_prompt_style(name: str, tokenizer=None) -> PromptStyle | ChatStyle:
    """The style called ``name``; ``chat`` needs the tokenizer whose template it uses."""
    if name == CHAT:
        if tokenizer is None:
            raise SortedNetError("prompt_style=chat needs the tokenizer; this is a bug in the caller")
        return ChatStyle(tokenizer)
    if name not in PROMPT_STYLES:
        raise SortedNetError(f"unknown prompt style {name!r}; choose one of {sorted([*PROMPT_STYLES, CHAT])}")
    return PROMPT_STYLES[name]


def encode_prompts(tokenizer, style: PromptStyle | ChatStyle, rows: Iterable[Mapping]) -> list[list[int]]:
    """Token ids of each row's prompt (its ``instruction``, and ``input`` when it has one) in ``style``,
    tokenized as training tokenizes prompts (the tokenizer's own special tokens, e.g. LLaMA's BOS, included)."""
    return tokenizer([style.format(row["instruction"], row.get("input") or "") for row in rows])["input_ids"]
