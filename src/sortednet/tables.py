"""The package's one table formatter: Markdown tables, as the commands print them and the recorded results
(``experiments/results/*.md``) hold them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], title: str = "") -> str:
    """A header line, its ``|---|`` rule and one line per row; each cell as ``str`` gives it (callers format
    their numbers); ``title`` on a line of its own above, when given."""
    lines = [title] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
