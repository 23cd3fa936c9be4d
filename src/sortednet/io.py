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
