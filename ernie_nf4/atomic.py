"""Write a folder or a file so that a reader never sees it half written.

``staged_folder(target)`` gives a hidden sibling folder to fill; on success the old ``target`` (if any) is moved
aside, the new one renamed into place and the old one removed last, so a killed build or download never leaves a
half folder that looks whole and an old one survives until the new one is complete. ``clean_leftovers`` removes
what a killed writer left (and restores the old folder if the swap itself was cut). ``write_text`` does the same
for one file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(target: Path, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(target: Path) -> None:
    """Remove what a killed writer left beside ``target``; restore the old one if the swap was cut.
    Raises ``RuntimeError`` when another live process is writing ``target``."""
    for leftover in _leftovers(target, "building"):
        pid = leftover.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            raise RuntimeError(f"{target}: another process (pid {pid}) is writing it; wait for it to finish")
        logger.info("removing leftover %s of an interrupted write", leftover)
        _remove(leftover)
    for old in _leftovers(target, "old"):
        if not target.exists():
            logger.info("restoring %s from an interrupted swap", target)
            old.rename(target)
        else:
            _remove(old)


@contextlib.contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``target`` to fill; it replaces ``target`` when the block ends without an
    exception, and is removed when it raises (``KeyboardInterrupt`` included)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    staging = target.with_name(f".{target.name}.building-{os.getpid()}")
    staging.mkdir()
    try:
        yield staging
        replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target``: the old one is moved aside only now, and removed last."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists() or target.is_symlink():
        target.rename(old)
    new.rename(target)
    if old.exists() or old.is_symlink():
        _remove(old)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary sibling (one per writing thread: several may write the same
    file at once) and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def cannot_write_in(folder: str | Path) -> str | None:
    """Why new files cannot be made in ``folder`` (which may not exist yet: the nearest folder above that does is
    tried, with a temporary file), in words for an error; None when they can."""
    folder = Path(folder).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        with tempfile.TemporaryFile(dir=existing):
            return None
    except OSError as err:
        return f"{existing} cannot be written ({err.strerror or type(err).__name__})"
