"""One Markdown table per checkpoint and exit from the CSVs `sortednet.evaluate` wrote into one directory.

    python experiments/summarise_evaluation.py EVAL_DIR

Columns, where the suite ran: held-out loss (suite=loss), ROUGE-L and mean answer length (suite=generate),
TriviaQA exact match, cased and normalised, and F1 (suite=triviaqa), and greedy ms/token: generate's (its
batches, answers of its length) and pareto's measured profile (batch 1). A missing suite leaves its columns
out. Checkpoints in the order the first suite lists them.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

COLUMNS = [  # (file, column, header, format)
    ("loss.csv", "loss", "held-out loss", "{:.2f}"),
    ("generate.csv", "rouge_l", "ROUGE-L", "{:.3f}"),
    ("generate.csv", "mean_answer_tokens", "answer tokens", "{:.0f}"),
    ("triviaqa.csv", "em_cased", "TriviaQA EM", "{:.3f}"),
    ("triviaqa.csv", "em", "TriviaQA EM (norm.)", "{:.3f}"),
    ("triviaqa.csv", "f1", "TriviaQA F1", "{:.3f}"),
    ("generate.csv", "ms_per_token", "ms/token (generate)", "{:.1f}"),
    ("pareto.csv", "ms_per_token", "ms/token (pareto)", "{:.1f}"),
]


def read(path: Path) -> dict[tuple[str, int], dict]:
    with path.open() as f:
        return {(row["name"], int(row["exit"])): row for row in csv.DictReader(f)}


def main() -> None:
    root = Path(sys.argv[1])
    tables = {name: read(root / name) for name in {c[0] for c in COLUMNS} if (root / name).is_file()}
    columns = [c for c in COLUMNS if c[0] in tables and c[1] in next(iter(tables[c[0]].values()), {})]
    keys = list(dict.fromkeys(key for table in tables.values() for key in table))
    print("| checkpoint | exit | " + " | ".join(c[2] for c in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for name, exit_ in keys:
        cells = []
        for file, column, _, fmt in columns:
            value = tables[file].get((name, exit_), {}).get(column)
            cells.append(fmt.format(float(value)) if value not in (None, "") else "")
        print(f"| {name} | {exit_} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
