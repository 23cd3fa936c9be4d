"""A small ``key=value`` command line for the inference CLIs (``sortednet.generate``, ``sortednet.export``).

``parse_overrides(argv, Config)`` turns ``["exit=4", "prompt=Hi there", "thresholds=[0.9,0.8]"]`` into a
``Config`` dataclass instance, converting each value to its field's type: ``int``, ``float``, ``bool``
(``true``/``false``, ``1``/``0``, ``yes``/``no``), ``str``, ``list[...]`` (``[a,b]``, ``[]``) and unions of
these with ``None`` (``null`` or ``none``). A value may contain ``=`` (only the first one splits). An
unknown key, a key given twice, an argument without ``=`` or a value of the wrong type is a
:class:`~sortednet.errors.SortedNetError` that names the key and lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sortednet.errors import SortedNetError

T = TypeVar("T")
_TRUE, _FALSE, _NONE = ("true", "yes", "1", "on"), ("false", "no", "0", "off"), ("null", "none", "~")


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp) or (str,)
        return f"list of {_type_name(item)}"
    return getattr(tp, "__name__", str(tp))


def _convert(text: str, tp: Any) -> Any:
    """``text`` as a value of type ``tp``; ValueError if it is not one."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in _NONE:
            return None
        for arg in args:  # in declaration order: `int | str` reads "4" as 4 and "auto" as "auto"
            if arg is type(None):
                continue
            try:
                return _convert(text, arg)
            except ValueError:
                continue
        raise ValueError(text)
    if origin is list or tp is list:
        (item,) = typing.get_args(tp) or (str,)
        body = text.strip()
        if not (body.startswith("[") and body.endswith("]")):
            raise ValueError(text)
        body = body[1:-1].strip()
        return [_convert(part.strip(), item) for part in body.split(",")] if body else []
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(text)
    if tp is int:
        return int(text.strip())
    if tp is float:
        value = float(text.strip())
        if value != value:  # NaN compares unequal to everything
            raise ValueError(text)
        return value
    if tp is str:
        return text
    raise TypeError(f"parse_overrides cannot read fields of type {tp!r}")


def describe(config_type: type) -> str:
    """One line per key: ``key=<type> (default: ...)`` and the field's docstring-free description."""
    hints = typing.get_type_hints(config_type)
    lines = []
    for field in dataclasses.fields(config_type):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        lines.append(f"  {field.name}=<{_type_name(hints[field.name])}>  (default: {default!r})")
    return "\n".join(lines)


def parse_overrides(argv: Sequence[str], config_type: type[T]) -> T:
    """A ``config_type`` instance (a dataclass with defaults for every field) from ``key=value`` arguments."""
    hints = typing.get_type_hints(config_type)
    names = [f.name for f in dataclasses.fields(config_type)]
    valid = ", ".join(names)
    values: dict[str, Any] = {}
    for arg in argv:
        key, sep, text = arg.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SortedNetError(f"argument {arg!r} is not key=value; valid keys: {valid}")
        if key not in hints or key not in names:
            raise SortedNetError(f"unknown key {key!r}; valid keys: {valid}")
        if key in values:
            raise SortedNetError(f"{key} is given twice; give each key once")
        try:
            values[key] = _convert(text, hints[key])
        except ValueError as error:
            raise SortedNetError(
                f"{key}={text!r} is not a valid {_type_name(hints[key])}; give e.g. {key}={_example(hints[key])}"
            ) from error
    return config_type(**values)


def _example(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _example(next(a for a in typing.get_args(tp) if a is not type(None)))
    if origin is list:
        (item,) = typing.get_args(tp) or (str,)
        return f"[{_example(item)},{_example(item)}]"
    return {bool: "true", int: "4", float: "0.5", str: "text"}.get(tp, "...")


def run(main: Callable[[T], None], config_type: type[T], argv: Sequence[str] | None, usage: str) -> int:
    """Parse ``argv`` into ``config_type`` and call ``main`` with it; the CLI's exit status.

    ``-h``/``--help`` prints ``usage`` and the keys. A :class:`SortedNetError` becomes one line on stderr,
    ``sortednet: error: ...``, and status 2; a closed stdout (``| head``) ends quietly.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if any(a in ("-h", "--help", "help") for a in argv):
            print(f"{usage.strip()}\n\nkeys:\n{describe(config_type)}")
            return 0
        main(parse_overrides(argv, config_type))
    except SortedNetError as error:
        message = " ".join(str(error).split("\n"))
        print(f"sortednet: error: {message}", file=sys.stderr)
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
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
