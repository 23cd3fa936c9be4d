"""Writing files and directories so that a crash never leaves a half-written one in place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_dir_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Build ``target`` in a fresh temporary sibling and rename it into place.

    If another process finishes the same ``target`` first, theirs is kept. The temporary directory is
    removed in every case.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_file_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write ``target`` through ``write(tmp)`` into a temporary sibling, then rename it into place: readers
    see the old file or the new one. The temporary file is removed if ``write`` fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(target: Path, text: str) -> None:
    """``text`` (UTF-8) into ``target``, atomically (:func:`write_file_atomically`)."""
    write_file_atomically(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of the user's file ``path`` (``what`` names it, e.g. "data file"); a one-line error if unreadable."""
    from sortednet.errors import SortedNetError

    try:
        return path.read_bytes()
    except OSError as error:
        raise SortedNetError(f"cannot read {what} {str(path)!r} ({error.strerror}); check its permissions") from error


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of the user's file ``path`` (:func:`read_bytes`); a one-line error for a file that cannot
    be read, is binary (not UTF-8) or is empty."""
    from sortednet.errors import SortedNetError

    data = read_bytes(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SortedNetError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {error.start}); pass a text file (JSON, JSON Lines or .txt)"
        ) from error
    if not text.strip():
        raise SortedNetError(f"{what} {str(path)!r} is empty; pass a file with rows in it")
    return text


def check_creatable_dir(path: Path, key: str) -> None:
    """One-line error unless ``path`` is a directory or can be made one: checked on its nearest existing
    ancestor, before any work (an ``out=`` under a file or a read-only directory fails at once, not after a
    model was loaded)."""
    from sortednet.errors import SortedNetError

    fix = f"pick another: {key}=DIR"
    if path.exists() and not path.is_dir():
        raise SortedNetError(f"{key}={str(path)!r} is a file, not a directory; {fix}")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SortedNetError(f"{key}={str(path)!r} lies under the file {str(ancestor)!r}; {fix}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SortedNetError(f"{key}={str(path)!r}: {str(ancestor)!r} is not writable; {fix}")
