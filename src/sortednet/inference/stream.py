"""Generated text written to a terminal token by token, as it arrives."""

from __future__ import annotations

import sys


class TextStream:
    """Writes the text of generated tokens to ``out`` as they arrive.

    The whole id list is decoded each time and only the new suffix is written, so byte-level pieces of
    one character and BPE merges print correctly; a trailing incomplete character (U+FFFD) waits for
    the next token.
    """

    def __init__(self, tokenizer, out=None):
        self.tokenizer, self.out = tokenizer, out
        self.ids: list[int] = []
        self.printed = ""

    def push(self, *ids: int) -> None:
        self.ids.extend(int(i) for i in ids)
        self._emit(final=False)

    def finish(self, ids: list[int] | None = None) -> str:
        """Write what is left of the text of ``ids`` (default: the tokens pushed); the whole text."""
        if ids is not None and list(ids) != self.ids:
            self.ids = [int(i) for i in ids]
        self._emit(final=True)
        return self.printed

    def _emit(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not final:
            text = text.rstrip("\ufffd")
        if text.startswith(self.printed):
            new, self.printed = text[len(self.printed) :], text
            out = self.out or sys.stdout
            out.write(new)
            out.flush()
        elif final:
            print("sortednet: warning: the streamed text differs from the final decoding", file=sys.stderr)
