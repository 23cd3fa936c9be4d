"""Where evaluation results go: a run directory (CSV, JSON, PNG, written atomically) and, optionally, W&B.

A result file is never overwritten: when ``loss.csv`` already holds something, the new one is written as
``loss-2.csv`` (then ``-3``, ...) and a note goes to stderr. Answer files (``answers/*.jsonl``) are the
exception: they are a cache with recorded settings, replaced atomically when the settings change
(see :mod:`sortednet.eval.generation`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from sortednet.io import write_file_atomically, write_text_atomically
from sortednet.tables import markdown_table
from sortednet.tracking import wandb_credentials


def free_path(path: Path) -> Path:
    """``path`` if it is absent or empty, else the first free ``stem-N.suffix`` (N = 2, 3, ...)."""
    if not path.exists() or path.stat().st_size == 0:
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists() or candidate.stat().st_size == 0:
            return candidate
        n += 1


def csv_text(rows: Sequence[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def json_lines_text(records: Iterable[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, title: str = "") -> str:
    """``rows`` as a Markdown table: floats with 4 significant digits, missing cells as ``-``."""
    if not rows:
        return title
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))

    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    return markdown_table(columns, [[cell(row.get(c)) for c in columns] for row in rows], title)


def show_table(rows: Sequence[dict], columns: Sequence[str], title: str) -> None:
    """A suite's table on stdout (its files hold the same rows)."""
    print(format_table(rows, columns, title), flush=True)


class RunDir:
    """A run directory plus an optional W&B run: each result is written to disk and logged there, tables as
    ``eval/<name>/table`` and plots as ``eval/<name>/plot`` (one key, one type)."""

    def __init__(self, root: str | os.PathLike, wandb_run=None):
        self.root = Path(root).expanduser()  # created with the first result, so a failed run leaves nothing
        self.wandb_run = wandb_run

    def path(self, name: str) -> Path:
        """Where the result file ``name`` goes: ``root/name``, or the first free ``name-N`` beside it."""
        self.root.mkdir(parents=True, exist_ok=True)
        wanted = self.root / name
        path = free_path(wanted)
        if path != wanted:
            print(f"sortednet: {wanted} exists; writing {path.name} beside it", file=sys.stderr)
        return path

    def table(self, name: str, rows: Sequence[dict]) -> Path:
        """``rows`` as ``<name>.csv`` (and a W&B table of that name)."""
        path = self.path(f"{name}.csv")
        write_text_atomically(path, csv_text(rows))
        self.log_table(name, rows)
        return path

    def log_table(self, name: str, rows: Sequence[dict]) -> None:
        """``rows`` as a W&B table (nothing without a W&B run)."""
        if self.wandb_run is not None and rows:
            import wandb  # lazy: slow to import, and only a W&B run needs it

            columns = list(dict.fromkeys(key for row in rows for key in row))
            data = [[row.get(c) for c in columns] for row in rows]
            self.wandb_run.log({f"eval/{name}/table": wandb.Table(columns=columns, data=data)})

    def json(self, name: str, data) -> Path:
        path = self.path(f"{name}.json")
        write_text_atomically(path, json.dumps(data, indent=2) + "\n")
        return path

    def jsonl(self, name: str, records: Iterable[dict]) -> Path:
        """``records`` as JSON Lines, ``<name>.jsonl``."""
        path = self.path(f"{name}.jsonl")
        write_text_atomically(path, json_lines_text(records))
        return path

    def figure(self, name: str, figure) -> Path:
        """A matplotlib figure as ``<name>.png`` (and a W&B image); the figure is closed."""
        import matplotlib.pyplot as plt  # lazy, as wandb below: slow to import (see pyplot, log_table)

        path = self.path(f"{name}.png")
        try:
            write_file_atomically(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
        finally:
            plt.close(figure)
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({f"eval/{name}/plot": wandb.Image(str(path))})
        return path

    def image(self, name: str, path: Path) -> None:
        """Log a PNG written by someone else's plotting function."""
        if self.wandb_run is not None and path.is_file():
            import wandb  # lazy: see log_table

            self.wandb_run.log({f"eval/{name}/plot": wandb.Image(str(path))})


def pyplot():
    """matplotlib's ``pyplot``, drawing off-screen (the Agg backend: no display needed)."""
    import matplotlib  # lazy: about a second to import, and only the plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_exit(table: Sequence[dict], panels: Sequence[tuple[str, str]], title: str):
    """One panel per ``(key, label)``: the value against the exit, one line per checkpoint (``name``)."""
    plt = pyplot()
    panels = [(key, label) for key, label in panels if any(row.get(key) is not None for row in table)]
    figure, axes = plt.subplots(1, len(panels), figsize=(1 + 5 * len(panels), 4), squeeze=False)
    for axis, (key, label) in zip(axes[0], panels, strict=True):
        for name in dict.fromkeys(row["name"] for row in table):
            mine = [row for row in table if row["name"] == name and row.get(key) is not None]
            axis.plot([r["exit"] for r in mine], [r[key] for r in mine], marker="o", label=name)
        axis.set_xlabel("exit (layers)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def start_wandb(project: str | None, run_dir: Path, name: str, config: dict):
    """``(run, owned)``: a new W&B run for ``project`` (offline without credentials, like training), the
    active ``wandb.run`` when no project is given, or ``(None, False)``. ``owned`` runs are finished by
    the caller."""
    if project is None:  # an active run exists only if wandb was imported already
        wandb = sys.modules.get("wandb")
        return (getattr(wandb, "run", None), False) if wandb is not None else (None, False)
    import wandb  # lazy: see log_table

    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials() else "offline")
    run = wandb.init(project=project, name=name, dir=str(run_dir), config=config, job_type="evaluate", mode=mode)
    return run, True
