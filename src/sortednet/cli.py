"""One way to write a command: ``key=value`` arguments over a typed config.

A command's config is a dataclass with a default and a docstring under every field (as in
:mod:`sortednet.config`); a field holding another such dataclass is a group whose keys are dotted
(``plan.mfu=0.5``). :func:`parse` merges the arguments into ``OmegaConf.structured(Config)``, so OmegaConf
checks every value against its field's type. A value for a ``str`` field is taken verbatim (commas, colons,
spaces, brackets and ``=`` included: only the first ``=`` splits); ``null`` sets an optional field to None;
every other value is read as YAML (OmegaConf's reader: ``[1,2]``, ``true``, ``1e-3``) and then checked. An
unknown key (with the closest valid ones), a key given twice, an argument without ``=`` or a value of the wrong
type is a one-line :class:`~sortednet.errors.SortedNetError`. :func:`describe` is the ``--help`` text: one
block per key with its type, default and docstring, read from the dataclass's source with :mod:`ast`.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sortednet.errors import SortedNetError

T = TypeVar("T")
HELP = ("-h", "--help", "help")


class Key(NamedTuple):
    """One settable key of a config: its dotted name, declared type, default, docstring, and its type as the help
    writes it (a field's ``metadata["type"]`` where the declared type is ``Any``: OmegaConf has no unions of
    containers, such as ``str | list[str]``)."""

    name: str
    type: Any
    default: Any
    doc: str
    type_text: str


@functools.cache
def field_docs(config_type: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (and of its dataclass bases), read from its source."""
    docs: dict[str, str] = {}
    for cls in reversed(config_type.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError):  # no source (a frozen or generated class): keys without docstrings
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "???"  # OmegaConf's mark of a value that must be given


def config_keys(config_type: type, prefix: str = "") -> dict[str, Key]:
    """Every settable key of ``config_type``, groups (nested dataclasses) flattened to dotted names."""
    hints, docs = typing.get_type_hints(config_type), field_docs(config_type)
    keys: dict[str, Key] = {}
    for field in dataclasses.fields(config_type):
        name, tp = prefix + field.name, hints[field.name]
        if _is_config(tp):
            keys.update(config_keys(tp, name + "."))
        else:
            text = field.metadata.get("type") or type_name(tp)
            keys[name] = Key(name, tp, _default(field), docs.get(field.name, ""), text)
    return keys


def groups(config_type: type, prefix: str = "") -> dict[str, str]:
    """The dotted names of the groups of ``config_type`` and their docstrings."""
    hints, docs = typing.get_type_hints(config_type), field_docs(config_type)
    found: dict[str, str] = {}
    for field in dataclasses.fields(config_type):
        if _is_config(hints[field.name]):
            own = hints[field.name].__doc__ or ""  # dataclass() writes the signature where a class has no docstring
            own = "" if own.startswith(hints[field.name].__name__ + "(") else inspect.cleandoc(own)
            found[prefix + field.name] = docs.get(field.name) or own
            found.update(groups(hints[field.name], prefix + field.name + "."))
    return found


def type_name(tp: Any) -> str:
    """A type as the help and the errors write it: ``int``, ``list of float``, ``int | str | null``."""
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"list of {type_name(item)}"
    if typing.get_origin(tp) is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _example(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return _example(args[0])
    if typing.get_origin(tp) is list:
        return {int: "[1,2]", float: "[0.5,0.9]"}.get(args[0] if args else str, "[a,b]")
    return {bool: "true", int: "4", float: "0.5", str: "text"}.get(tp, "...")


def _show(value: Any) -> str:
    """A default as it would be typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_show(v) if not isinstance(v, str) else v for v in value) + "]"
    return str(value)


def describe(config_type: type) -> str:
    """The keys of ``config_type`` for ``--help``: ``key=<type>  (default: ...)``, then its docstring, indented."""
    lines = []
    group_docs = groups(config_type)
    shown: set[str] = set()
    for key in config_keys(config_type).values():
        group = key.name.rpartition(".")[0]
        if group and group not in shown and group in group_docs:
            shown.add(group)
            first, *rest = group_docs[group].splitlines() or [""]
            lines.append(f"  {group}.*  {first}".rstrip())
            lines += [f"      {line}" for line in rest]
        lines.append(f"  {key.name}=<{key.type_text}>  (default: {_show(key.default)})")
        lines += [f"      {line}" for line in key.doc.splitlines()]
    return "\n".join(lines)


def usage(doc: str | None, config_type: type) -> str:
    """A command's ``--help``: its docstring, then its keys."""
    return f"{inspect.cleandoc(doc or '')}\n\nkeys:\n{describe(config_type)}"


def unknown_key(key: str, valid: Sequence[str]) -> SortedNetError:
    """An unknown ``key``, with the closest valid ones and the full list."""
    children = [k for k in valid if k.startswith(key + ".")]
    if children:
        return SortedNetError(f"{key} is a group of keys; set one of them: {', '.join(children)}")
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = f" did you mean {' or '.join(close)}?" if close else ""
    return SortedNetError(f"unknown key {key!r};{hint} valid keys: {', '.join(valid)}")


def wrong_type(key: str, text: str, tp: Any) -> SortedNetError:
    """``key=text`` is not a value of ``tp``: the key, the value, the type and an example, in one line."""
    return SortedNetError(f"{key}={text!r} is not a valid {type_name(tp)}; give e.g. {key}={_example(tp)}")


def _literal(value: Any) -> Any:
    """``value`` with every ``${`` escaped, so OmegaConf keeps it as text instead of interpolating it."""
    if isinstance(value, str):
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, list):
        return [_literal(v) for v in value]
    return value


def _value(text: str, tp: Any) -> Any:
    """The Python value of ``text`` for a field of type ``tp``, before OmegaConf checks it against ``tp``."""
    args = set(typing.get_args(tp)) if typing.get_origin(tp) in (typing.Union, types.UnionType) else {tp}
    if (type(None) in args or tp is Any) and text.strip().lower() in ("null", "~"):
        return None
    if args - {type(None)} == {str}:
        return text  # verbatim: a prompt or a path is never YAML
    try:  # OmegaConf's own reading of a dotlist value: YAML
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]  # type: ignore[index]
    except yaml.YAMLError:
        return text  # not YAML: OmegaConf refuses it for any type but str
    if tp is Any and isinstance(value, dict):  # "a: b" is text, not a mapping
        return text
    return text if value is None and text.strip() else value


def parse(argv: Sequence[str], config_type: type[T]) -> T:
    """A ``config_type`` instance (a dataclass with defaults) from ``key=value`` arguments, checked by OmegaConf."""
    keys = config_keys(config_type)
    given: dict[str, str] = {}
    for arg in argv:
        key, sep, text = arg.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SortedNetError(f"argument {arg!r} is not key=value; valid keys: {', '.join(keys)}")
        if key not in keys:
            raise unknown_key(key, list(keys))
        if key in given:
            raise SortedNetError(f"{key} is given twice; give each key once")
        given[key] = text
    config = OmegaConf.structured(config_type)
    for key, text in given.items():
        tp = keys[key].type
        nested: dict[str, Any] = {}
        node = nested
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = _literal(_value(text, tp))
        try:
            config = OmegaConf.merge(config, nested)
        except OmegaConfBaseException as error:
            raise wrong_type(key, text, tp) from error
    return typing.cast(T, OmegaConf.to_object(config))


def one_line(error: BaseException) -> str:
    """``sortednet: error: ...`` with the message on one line."""
    return f"sortednet: error: {' '.join(str(error).split())}"


def run(main: Callable[[T], None], config_type: type[T], argv: Sequence[str] | None, doc: str | None) -> int:
    """Parse ``argv`` into ``config_type`` and call ``main`` with it; the command's exit status.

    ``-h``/``--help`` prints ``doc`` and the keys. A :class:`SortedNetError` becomes one line on stderr,
    ``sortednet: error: ...``, and status 2; a closed stdout (``| head``) ends quietly; Ctrl-C is status 130.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    return guarded(lambda: main(parse(argv, config_type)), argv, lambda: usage(doc, config_type))


def guarded(body: Callable[[], object], argv: Sequence[str], help_text: Callable[[], str]) -> int:
    """Run ``body`` as a command: ``--help`` prints ``help_text()``; errors, a closed pipe and Ctrl-C as :func:`run`."""
    try:
        if any(a in HELP for a in argv):
            print(help_text())
            return 0
        body()
    except SortedNetError as error:
        print(one_line(error), file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (e.g. `| head`): end quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("sortednet: interrupted", file=sys.stderr)
        return 130
    return 0


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers on stderr (ours carries timings)."""
    import transformers  # lazy: about a second to import, and the command line itself needs none of it

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
