"""Prompt styles, in a registry so a checkpoint can name the one it was trained with."""

from __future__ import annotations

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


def get_prompt_style(name: str) -> PromptStyle:
    if name not in PROMPT_STYLES:
        raise SortedNetError(f"unknown prompt style {name!r}; choose one of {sorted(PROMPT_STYLES)}")
    return PROMPT_STYLES[name]
