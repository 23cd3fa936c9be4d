"""Writing directories so that a crash never leaves a half-written one in place."""

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
