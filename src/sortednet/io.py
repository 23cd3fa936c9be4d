"""Reading the user's files, and the one place that writes files and directories atomically.

A write goes into a hidden temporary sibling of its target (``.NAME.XXXX.tmp``: the same file system, so a
rename is atomic on POSIX), is fsynced, and is renamed into place; the parent directory is fsynced too, so the
rename survives a power cut. Readers see the old target or the new one, never a mix; a write that raises
removes its temporary sibling. A process killed outright (SIGKILL, node loss) leaves only that hidden
``.NAME.XXXX.tmp`` behind, safe to delete. What happens to an existing target is each caller's choice, named
in :func:`write_dir_atomically`'s ``if_exists``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from sortednet.errors import SortedNetError

IfExists = Literal["replace", "keep", "refuse"]

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def write_file_atomically(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Write ``target`` through ``write(tmp)`` into a temporary sibling, then rename it over ``target``: readers
    see the old file or the new one. The file gets the mode a plain ``open`` would give (not mkstemp's 0600)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(target.parent)


def write_text_atomically(target: str | os.PathLike, text: str) -> None:
    """``text`` (UTF-8) into ``target``, atomically (:func:`write_file_atomically`)."""
    write_file_atomically(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_dir_atomically(
    target: str | os.PathLike, write: Callable[[Path], None], *, if_exists: IfExists, key: str = "out"
) -> None:
    """Build the directory ``target`` through ``write(tmp)`` in a temporary sibling, then put it in place.

    ``if_exists`` says what happens to a ``target`` that exists by then:

    - ``"replace"`` (checkpoints): the new directory takes its place (:func:`replace_dir`).
    - ``"keep"`` (caches that any process may build): another process finished it first; theirs is kept and
      this one dropped. An empty ``target`` is replaced.
    - ``"refuse"`` (a user's ``out=``): a one-line error, naming the user's ``key``, unless ``target`` is absent
      or an empty directory (which keeps its permissions). Check first with :func:`check_new_dir`, before any
      work.
    """
    target = Path(target)
    tmp = _temporary_dir(target, key if if_exists == "refuse" else None)
    try:
        # mkdtemp's 0700 would otherwise become the directory's mode; an empty target keeps the mode it has
        keeps_mode = if_exists == "refuse" and target.is_dir()
        tmp.chmod(target.stat().st_mode & 0o7777 if keeps_mode else 0o777 & ~_umask())
        write(tmp)
        for path in tmp.rglob("*"):  # as a plain write would make them, whatever the writer's temp files had
            if not path.is_symlink():
                path.chmod((0o777 if path.is_dir() else 0o666) & ~_umask())
        sync_tree(tmp)
        if if_exists == "replace":
            replace_dir(tmp, target)
        elif if_exists == "keep":
            try:
                os.replace(tmp, target)  # fails on a non-empty directory: the one another process finished
            except OSError:
                if not target.exists():
                    raise
        else:
            _rename_into_empty(tmp, target, key)
        _fsync(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _temporary_dir(target: Path, key: str | None) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as error:
        if key is None:
            raise
        raise SortedNetError(
            f"cannot create {key}={str(target)!r} ({error.strerror}); pick a writable {key}=DIR"
        ) from error


def _rename_into_empty(tmp: Path, target: Path, key: str) -> None:
    appeared = SortedNetError(f"{key}={str(target)!r} appeared while it was written; nothing was written there")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise appeared
    try:
        os.rename(tmp, target)  # atomic; replaces an empty directory, fails on a non-empty one
    except OSError as error:
        raise appeared from error


def replace_dir(new: Path, target: Path) -> None:
    """Put the complete directory ``new`` at ``target`` (a sibling), replacing whatever ``target`` holds: by one
    ``renameat2(RENAME_EXCHANGE)`` swap where the file system supports it (Linux ext4/xfs/tmpfs/btrfs: atomic),
    else by renaming the old ``target`` aside, ``new`` into place, and deleting the old (a crash between the two
    renames leaves no ``target`` but the old, complete one as ``.NAME.XXXX.old``, to be renamed back by hand).
    For writers over several processes (each writes its part into ``new``; one calls this)."""
    if not os.path.lexists(target):
        os.rename(new, target)
    elif _exchange(new, target):  # target is now the new directory, `new` the old one
        _remove(new)
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        old.rmdir()
        os.rename(target, old)
        os.rename(new, target)
        _remove(old)
    _fsync(target.parent)


def sync_tree(root: Path) -> None:
    """fsync every file under ``root`` and ``root`` itself (before a rename puts it in place)."""
    for path in root.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(root)


def new_dir_mode() -> int:
    """The mode a plain ``mkdir`` would give: for a temporary directory that becomes a user's directory."""
    return 0o777 & ~_umask()


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems cannot open or fsync directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of the user's file ``path`` (``what`` names it, e.g. "data file"); a one-line error if unreadable."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise SortedNetError(f"cannot read {what} {str(path)!r} ({error.strerror}); check its permissions") from error


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of the user's file ``path`` (:func:`read_bytes`); a one-line error for a file that cannot
    be read, is binary (not UTF-8) or is empty."""
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


def check_new_dir(path: Path, key: str) -> None:
    """One-line error unless ``path`` is absent or an empty directory, and can be created: the target of a
    ``write_dir_atomically(..., if_exists="refuse")``, checked before any work."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "a non-empty directory" if path.is_dir() else "a file"
        raise SortedNetError(
            f"{key}={str(path)!r} is {what}; nothing was written: pick a new {key}= or remove it first"
        )
    check_creatable_dir(path, key)
