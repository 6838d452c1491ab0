"""Where the app keeps its PNGs: one folder for every start (``--output-dir``, default
``~/.cache/ernie-nf4/outputs``). Kept unless pruning is asked for: with ``keep_count`` and/or ``keep_hours``, each
save deletes the app's PNGs beyond the newest ``keep_count`` or older than ``keep_hours``, and says so in the log.
Gradio serves them from there (``gr.set_static_paths``) instead of copying them to its cache; ``owns`` tells the
app's images from any other file in the folder (``limits.RequestLimits`` serves only those): the names of the PNGs
the app wrote are kept in ``MANIFEST`` in the folder (a file of that pattern put there by hand is not served)."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import cannot_write_in
from ..errors import InvalidArgument
from .png_params import save_png

logger = logging.getLogger(__name__)
DEFAULT_OUTPUT_DIR = Path("~/.cache/ernie-nf4/outputs")
PATTERN = "ernie-*.png"
NAME = re.compile(r"ernie-\d{8}-\d{6}-\d{6}-\d+\.png")  # as ``save_png`` names them: pruning deletes no other file
MANIFEST = ".ernie-nf4-made"  # one file name per line: the PNGs this app wrote and has not deleted


@dataclass
class OutputStore:
    folder: Path = DEFAULT_OUTPUT_DIR
    keep_count: int | None = None  # None: no bound on the count
    keep_hours: float | None = None  # None: no bound on the age

    def __post_init__(self) -> None:
        if self.keep_count is not None and self.keep_count < 1:
            raise InvalidArgument(f"keep_count must be at least 1, got {self.keep_count}", field="keep_count")
        if self.keep_hours is not None and not 0 < self.keep_hours < float("inf"):
            raise InvalidArgument(
                f"keep_hours must be more than 0 and finite (leave it out to keep outputs of any age), got "
                f"{self.keep_hours}",
                field="keep_hours",
            )
        if not str(self.folder).strip():
            raise InvalidArgument("folder is empty; give a folder, or leave it out for the default", field="folder")
        self.folder = Path(self.folder).expanduser().resolve()
        if problem := cannot_write_in(self.folder):  # refused at start, not at the first image
            message = f"folder {str(self.folder)!r}: {problem}; give one this user can write"
            raise InvalidArgument(message, field="folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._made = self._read_manifest()
        self.serve()  # pruned at each save, and by the app once it listens (never by a start that fails)

    def serve(self) -> None:
        """Let Gradio serve this folder's files in place (no second copy in its cache)."""
        import gradio as gr

        gr.set_static_paths([str(self.folder)])

    @property
    def prunes(self) -> bool:
        return self.keep_count is not None or self.keep_hours is not None

    def policy(self) -> str:
        """One line for the terminal: where the images go and what is deleted."""
        if not self.prunes:
            return f"Outputs: {self.folder} (all kept; --keep-outputs N or --keep-hours H to delete old ones)"
        bounds = [f"the newest {self.keep_count}"] if self.keep_count is not None else []
        bounds += [f"those younger than {self.keep_hours:g} h"] if self.keep_hours is not None else []
        return f"Outputs: {self.folder} (keeping {' and '.join(bounds)}; older ones are deleted)"

    def _inside(self, path: Path) -> bool:
        return path == self.folder or self.folder in path.parents

    def holds(self, text: str) -> bool:
        """True when the path (as Gradio's file route reads it: relative to the working folder) is in the folder."""
        path = Path(os.path.abspath(text))
        return self._inside(path) or self._inside(path.resolve())

    def owns(self, text: str) -> bool:
        """True for one of the app's images: a PNG the app wrote (named in the manifest), directly in the folder."""
        path = Path(os.path.abspath(text))
        return (
            path.parent == self.folder
            and fnmatch.fnmatchcase(path.name, PATTERN)
            and path.name in self._made
            and not path.is_symlink()
        )

    def save(self, image, seed: int, parameters: str) -> Path:
        with self._lock:
            path = save_png(image, self.folder, seed, parameters)
            self._made.add(path.name)
            with open(self.folder / MANIFEST, "a", encoding="utf-8") as manifest:
                manifest.write(path.name + "\n")
            self.prune()
        return path

    def _read_manifest(self) -> set[str]:
        """The names the app wrote that are still there (the manifest rewritten without the others)."""
        try:
            names = (self.folder / MANIFEST).read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError):
            return set()
        self._made = {name for name in names if fnmatch.fnmatchcase(name, PATTERN) and (self.folder / name).is_file()}
        if len(self._made) != len(names):
            self._write_manifest()
        return self._made

    def _write_manifest(self) -> None:
        (self.folder / MANIFEST).write_text("".join(f"{name}\n" for name in sorted(self._made)), encoding="utf-8")

    def prune(self) -> list[Path]:
        """Delete this app's PNGs (named as it names them) beyond the newest ``keep_count`` or older than
        ``keep_hours`` (none when neither is set); each deletion is logged."""
        if not self.prunes:
            return []
        now = time.time()
        count = self.keep_count if self.keep_count is not None else float("inf")
        age = self.keep_hours * 3600 if self.keep_hours is not None else float("inf")
        files = []
        for path in self.folder.glob(PATTERN):
            try:
                info = path.lstat()
            except OSError:  # deleted meanwhile (by another replica's prune)
                continue
            if NAME.fullmatch(path.name) and stat.S_ISREG(info.st_mode):
                files.append((info.st_mtime, path))
        files.sort(reverse=True)
        deleted = []
        for path in [path for i, (mtime, path) in enumerate(files) if i >= count or now - mtime > age]:
            try:
                path.unlink(missing_ok=True)
            except OSError as err:  # a file this user may not delete: kept, and said, the app goes on
                logger.warning("could not delete old output %s (%s)", path, err.strerror or err)
                continue
            deleted.append(path)
            self._made.discard(path.name)
        if deleted:
            self._write_manifest()
            names = ", ".join(p.name for p in deleted[:5])
            names += f" and {len(deleted) - 5} more" if len(deleted) > 5 else ""
            logger.info("deleted %d old output(s) from %s (%s): %s", len(deleted), self.folder, self._rule(), names)
        return deleted

    def _rule(self) -> str:
        rules = [f"--keep-outputs {self.keep_count}"] if self.keep_count is not None else []
        rules += [f"--keep-hours {self.keep_hours:g}"] if self.keep_hours is not None else []
        return ", ".join(rules)
