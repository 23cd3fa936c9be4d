"""lm-evaluation-harness at every exit: each exit is handed to lm-eval as the sub-model it is.

For exit K, :meth:`~sortednet.model.SortedLM.at_exit` turns the loaded model into sub-model K in place (its first
K decoder layers, the final norm and exit K's head, Hugging Face's own KV cache), and lm-eval's Hugging Face
model class evaluates that model object (``HFLM(pretrained=<model>, tokenizer=...)``), so loglikelihood,
multiple-choice and generate_until tasks all run as lm-eval runs them for any HF model. Task prompts are
lm-eval's (the checkpoint's own prompt template is not applied, as for any model under lm-eval).

lm-eval is an optional dependency (``pip install 'sortednet[eval]'``); tasks come from lm-eval's registry or
from the user's own YAML files (``include_path=DIR``, read by ``TaskManager(include_path=DIR)``).
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from sortednet.errors import SortedNetError
from sortednet.eval.checkpoints import each_checkpoint
from sortednet.eval.output import plot_per_exit, show_table

STDERR = "_stderr"
KEPT = ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples")


def task_manager(include_path: str | None):
    """lm-eval's TaskManager (with the user's task directory), or a one-line error naming the fix."""
    try:  # lazy: lm-evaluation-harness is an optional extra (sortednet[eval])
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise SortedNetError(
            "suite=lm_eval needs lm-evaluation-harness, which is not installed; pip install 'sortednet[eval]'"
        ) from error
    if include_path is None:
        return _indexed(TaskManager, None)
    directory = Path(include_path).expanduser()
    if not directory.is_dir():
        raise SortedNetError(f"include_path={include_path!r} is not a directory; pass a directory of task YAML files")
    return _indexed(TaskManager, str(directory.absolute()))


@functools.lru_cache(maxsize=4)
def _indexed(manager_type, include_path: str | None):
    """A TaskManager per task directory, built once per process: it indexes every task YAML (seconds), and a
    process that evaluates several checkpoints (or tests) asks again with the same directory (YAML files edited
    meanwhile are not read again)."""
    return manager_type() if include_path is None else manager_type(include_path=include_path)


def check_tasks(manager, tasks: Sequence[str]) -> list[str]:
    """The task names, each known to ``manager`` (task, group or tag), or a one-line error."""
    if not tasks:
        raise SortedNetError("suite=lm_eval needs tasks=[...], e.g. tasks=[hellaswag] or a task of include_path=DIR")
    known = set(manager.all_tasks)
    for name in tasks:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "pass include_path=DIR for your own task YAMLs"
            raise SortedNetError(f"unknown lm-eval task {name!r}; {hint}")
    return list(tasks)


def evaluate_exit(net, tokenizer, exit_: int, tasks, manager, *, num_fewshot, limit, batch_size: int) -> dict:
    """lm-eval's results for sub-model ``exit_`` of ``net``: the ``simple_evaluate`` dict without per-sample logs."""
    from lm_eval import simple_evaluate  # lazy: the optional extra (sortednet[eval])
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import handle_non_serializable

    # its per-request INFO lines drown the table, and it warns that a model object (what we mean) is not a path
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with net.at_exit(exit_) as lm:
        model = HFLM(pretrained=lm, tokenizer=tokenizer, batch_size=batch_size)
        results = simple_evaluate(
            model=model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            log_samples=False,
        )  # fmt: skip
    kept = {key: results[key] for key in KEPT if key in results}
    return json.loads(json.dumps(kept, default=handle_non_serializable))  # plain JSON (configs hold functions)


def _metrics(values: dict) -> dict:
    # lm-eval keys its metrics "metric,filter"; the other entries (name, alias, sample_len) describe the task
    return {k: v for k, v in values.items() if "," in k and isinstance(v, (int, float))}


def table_row(results: dict) -> dict:
    """One flat row: ``task/metric,filter`` -> value for every metric (stderr included) of every task."""
    return {f"{task}/{k}": v for task, values in results["results"].items() for k, v in _metrics(values).items()}


def main_metrics(results: dict) -> dict[str, str]:
    """Each task's first reported metric (``metric,filter``, not a stderr): the one plotted against the exit."""
    chosen = {}
    for task, values in results["results"].items():
        names = [k for k in _metrics(values) if STDERR not in k]
        if names:
            chosen[task] = names[0]
    return chosen


def run(settings, paths: list[str], names: list[str], out) -> list[dict]:
    """suite=lm_eval: lm-eval's tasks on every exit of every checkpoint -> an exit x task table
    (``lm_eval.csv``), lm-eval's result dicts (``lm_eval.json``) and a plot."""
    manager = task_manager(settings.include_path)  # lm-eval and the tasks are checked before a model loads
    tasks = check_tasks(manager, settings.tasks or [])
    table, results = [], {}
    for ckpt in each_checkpoint(settings, paths, names):
        for e in ckpt.exits:
            result = evaluate_exit(
                ckpt.net, ckpt.tokenizer, e, tasks, manager,
                num_fewshot=settings.num_fewshot, limit=settings.limit, batch_size=settings.batch_size,
            )  # fmt: skip
            results.setdefault(ckpt.name, {})[str(e)] = result
            table.append({"name": ckpt.name, "exit": e, **table_row(result)})
            print(f"{ckpt.name} exit {e}: lm-eval done", file=sys.stderr)
    out.table("lm_eval", table)
    used = {"tasks": tasks, "num_fewshot": settings.num_fewshot, "limit": settings.limit}
    out.json("lm_eval", {**used, "include_path": settings.include_path, "results": results})
    metrics = main_metrics(next(iter(next(iter(results.values())).values())))
    panels = [(f"{task}/{metric}", f"{task}: {metric}") for task, metric in metrics.items()]
    out.figure("lm_eval", plot_per_exit(table, panels, "lm-evaluation-harness per exit"))
    show_table(table, ["name", "exit", *(key for key, _ in panels)], "lm-evaluation-harness per exit")
    return table
