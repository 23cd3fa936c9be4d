"""A small PandaLM-style judge for the embedded tasks: its training data, and how well it judges.

    python experiments/make_judge_data.py data OUT_DIR [--rows 3000] [--held-out 400] [--seed 1]
    python experiments/make_judge_data.py accuracy JUDGE_DIR OUT_DIR/heldout.jsonl
    python experiments/make_judge_data.py agreement EVAL_DIR

``data`` writes ``train.jsonl`` and ``heldout.jsonl``: Alpaca-format rows whose ``instruction`` is the full
PandaLM judge prompt (:func:`sortednet.eval.pandalm.build_prompt`, to be fed verbatim with
``data.prompt_style=plain``) and whose ``output`` is the verdict line PandaLM writes first: ``1``, ``2`` or
``Tie``. Each row pairs the correct answer of an embedded task row with a plausible wrong one (another row's
answer of the same or another task family, a changed digit or word, a dropped, repeated or reordered item,
a fragment of the answer), in both positions; a quarter of the rows also give a tie (both answers correct,
or two different wrong ones). The task rows come from ``embedded.make_rows`` with a seed other than the
embedded data set's, and rows whose (instruction, input) is among the first ``--exclude-first`` items of the
embedded validation split (the ones ``evaluate instructions=embedded limit=N`` judges) are left out, so
the judge never sees the instructions it is later asked about.

``accuracy`` runs the judge (a Hugging Face directory, e.g. from ``sortednet.export``) greedily on the
held-out rows and prints the share of verdicts equal to the target, overall, per target verdict and per
task family, and the unparseable rate.

``agreement`` compares the verdicts of an ``evaluate suite=pandalm`` run with the verdicts exact match
implies (the answer equal to the reference wins against one that is not; two correct or two wrong answers
tie) and prints the agreement rate, per outcome the exact-match oracle expects.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

from sortednet.embedded import COLORS, WORDS, make_rows
from sortednet.eval.generation import read_instructions
from sortednet.eval.pandalm import build_prompt, parse_verdict

FAMILIES = {
    "What color": "recall",
    "Repeat": "copy",
    "How many": "count",
    "Write the words": "reverse",
    "What is": "add",
}
VERDICT_TEXT = {"1": "1", "2": "2", "tie": "Tie"}


def family(instruction: str) -> str:
    return next(name for prefix, name in FAMILIES.items() if instruction.startswith(prefix))


def _change_number(text: str, rng: random.Random) -> str:
    value = int(re.search(r"\d+", text).group())
    wrong = value + rng.choice([-2, -1, 1, 2, 10])
    return re.sub(r"\d+", str(abs(wrong) if wrong != value else value + 1), text, count=1)


def _change_word(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    i = rng.randrange(len(words))
    core = words[i].rstrip(".")
    pool = COLORS if core in COLORS else WORDS
    words[i] = words[i].replace(core, rng.choice([w for w in pool if w != core]), 1)
    return " ".join(words)


def _edit_items(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    edits = ["repeat"] + (["drop", "reorder"] if len(words) > 1 else [])
    edit = rng.choice(edits)
    if edit == "drop":
        del words[rng.randrange(len(words))]
    elif edit == "reorder":
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        words = shuffled
    else:
        i = rng.randrange(len(words))
        words.insert(i, words[i])
    return " ".join(words)


def _fragment(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    return " ".join(words[rng.randrange(len(words)) :][:2]) if len(words) > 1 else rng.choice(WORDS)


def wrong_answer(row: dict, pool: dict[str, list[dict]], rng: random.Random) -> str:
    """A plausible wrong answer to ``row``: never equal to its correct output."""
    correct, name = row["output"], family(row["instruction"])
    for _ in range(20):
        kind = rng.choice(["same_family", "other_family", "edit", "edit", "fragment"])
        if kind == "same_family":
            answer = rng.choice(pool[name])["output"]
        elif kind == "other_family":
            answer = rng.choice(pool[rng.choice([f for f in pool if f != name])])["output"]
        elif kind == "fragment":
            answer = _fragment(correct, rng)
        elif name in ("count", "add"):
            answer = _change_number(correct, rng)
        elif name == "recall":
            answer = _change_word(correct, rng)
        else:
            answer = rng.choice([_change_word, _edit_items])(correct, rng)
        if answer.strip() != correct.strip():
            return answer
    raise RuntimeError(f"no wrong answer found for {row}")


def judge_rows(rows: list[dict], pool: dict[str, list[dict]], rng: random.Random) -> list[dict]:
    """Judge rows for task rows: (correct, wrong) -> 1 and (wrong, correct) -> 2, and a tie for a quarter."""
    out = []

    def add(row, first, second, verdict):
        prompt = build_prompt(row["instruction"], row["input"], first, second)
        out.append(
            {"instruction": prompt, "input": "", "output": VERDICT_TEXT[verdict], "family": family(row["instruction"])}
        )

    for row in rows:
        wrong = wrong_answer(row, pool, rng)
        add(row, row["output"], wrong, "1")
        add(row, wrong, row["output"], "2")
        if rng.random() < 0.25:
            if rng.random() < 0.5:
                add(row, row["output"], row["output"], "tie")
            else:
                other = wrong_answer(row, pool, rng)
                if other.strip() != wrong.strip():
                    add(row, wrong, other, "tie")
    return out


def make_data(args) -> None:
    evaluated = {(i["instruction"], i["input"]) for i in read_instructions("embedded", args.exclude_first)}
    candidates = make_rows(args.pool, seed=args.seed)
    rows = [r for r in candidates if (r["instruction"], r["input"]) not in evaluated]
    pool = defaultdict(list)
    for row in rows:
        pool[family(row["instruction"])].append(row)
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    held_out, train = rows[: args.held_out], rows[args.held_out : args.held_out + args.rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, task_rows in (("train", train), ("heldout", held_out)):
        judged = judge_rows(task_rows, pool, rng)
        rng.shuffle(judged)
        with (out / f"{name}.jsonl").open("w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in judged)
        verdicts = Counter(r["output"] for r in judged)
        print(
            f"{out / name}.jsonl: {len(judged)} judge rows from {len(task_rows)} task rows, verdicts {dict(verdicts)}"
        )
    print(
        f"task rows: seed {args.seed}, {len(candidates) - len(rows)} of {len(candidates)} left out because the first "
        f"{args.exclude_first} embedded validation items ask the same"
    )


def accuracy(args) -> None:
    import time

    from sortednet.eval.exits import greedy_answers
    from sortednet.eval.pandalm import load_judge
    from sortednet.model import SortedLM

    rows = [json.loads(line) for line in Path(args.heldout).read_text().splitlines()]
    judge, tokenizer = load_judge(args.judge)
    net = SortedLM(judge)
    start = time.perf_counter()
    ids = tokenizer([r["instruction"] for r in rows])["input_ids"]
    texts = greedy_answers(net, tokenizer, ids, net.num_layers, max_new_tokens=4, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    hits, seen = Counter(), Counter()
    unparseable = 0
    for row, text in zip(rows, texts, strict=True):
        verdict = parse_verdict(text)
        unparseable += verdict is None
        correct = verdict is not None and VERDICT_TEXT[verdict] == row["output"]
        for key in ("all", f"target {row['output']}", f"family {row['family']}"):
            seen[key] += 1
            hits[key] += correct
    print(f"judge {args.judge} on {len(rows)} held-out judge rows ({seconds:.1f} s)")
    print(f"{'rows':<16}{'n':>6}{'accuracy':>10}")
    for key in sorted(seen, key=lambda k: (k != "all", k)):
        print(f"{key:<16}{seen[key]:>6}{hits[key] / seen[key]:>10.3f}")
    print(f"unparseable verdicts: {unparseable} of {len(rows)}")


def agreement(args) -> None:
    root = Path(args.eval_dir)
    verdicts = [json.loads(line) for line in (root / "pandalm_verdicts.jsonl").read_text().splitlines()]
    exact = {}
    for path in (root / "answers").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            exact[(record["ckpt"], record["exit"], record["index"])] = record["exact"]
    seen, hits = Counter(), Counter()
    for record in verdicts:
        a, b = (_label(record[key]) for key in ("row", "col"))
        a_exact, b_exact = exact[(*a, record["item"])], exact[(*b, record["item"])]
        expected = "tie" if a_exact == b_exact else ("win" if a_exact else "loss")
        for key in ("all", f"oracle {expected}"):
            seen[key] += 1
            hits[key] += record["outcome"] == expected
    print(f"judge verdicts in {root} vs the exact-match oracle ({len(verdicts)} verdicts)")
    print(f"{'verdicts':<16}{'n':>6}{'agreement':>11}")
    for key in sorted(seen, key=lambda k: (k != "all", k)):
        print(f"{key:<16}{seen[key]:>6}{hits[key] / seen[key]:>11.3f}")


def _label(label: str) -> tuple[str, int]:
    name, exit_ = label.rsplit("@", 1)
    return name, int(exit_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data")
    data.add_argument("out")
    data.add_argument("--rows", type=int, default=3000, help="task rows for training (each gives 2-3 judge rows)")
    data.add_argument("--held-out", type=int, default=400, help="task rows for the accuracy check")
    data.add_argument("--pool", type=int, default=6000, help="task rows drawn before leaving any out")
    data.add_argument("--seed", type=int, default=1, help="the embedded data set uses 0")
    data.add_argument("--exclude-first", type=int, default=100, help="embedded validation items never to use")
    acc = sub.add_parser("accuracy")
    acc.add_argument("judge")
    acc.add_argument("heldout")
    acc.add_argument("--batch-size", type=int, default=32)
    agree = sub.add_parser("agreement")
    agree.add_argument("eval_dir")
    args = parser.parse_args()
    {"data": make_data, "accuracy": accuracy, "agreement": agreement}[args.what](args)


if __name__ == "__main__":
    main()
