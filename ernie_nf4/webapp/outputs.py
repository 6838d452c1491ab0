"""Where the app keeps its PNGs: one folder for every start (``--output-dir``, default
``~/.cache/ernie-nf4/outputs``), pruned after each save to the newest ``keep_count`` files younger than
``keep_hours``. Gradio serves them from there (``gr.set_static_paths``) instead of copying them to its cache."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument
from .png_params import save_png

logger = logging.getLogger(__name__)
DEFAULT_OUTPUT_DIR = Path("~/.cache/ernie-nf4/outputs")
PATTERN = "ernie-*.png"


@dataclass
class OutputStore:
    folder: Path = DEFAULT_OUTPUT_DIR
    keep_count: int = 200
    keep_hours: float = 24.0

    def __post_init__(self) -> None:
        if self.keep_count < 1:
            raise InvalidArgument(f"keep_count must be at least 1, got {self.keep_count}", field="keep_count")
        if not self.keep_hours > 0:
            raise InvalidArgument(f"keep_hours must be more than 0, got {self.keep_hours}", field="keep_hours")
        self.folder = Path(self.folder).expanduser().resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.serve()
        self.prune()

    def serve(self) -> None:
        """Let Gradio serve this folder's files in place (no second copy in its cache)."""
        import gradio as gr

        gr.set_static_paths([str(self.folder)])

    def save(self, image, seed: int, parameters: str) -> Path:
        with self._lock:
            path = save_png(image, self.folder, seed, parameters)
            self.prune()
        return path

    def prune(self) -> list[Path]:
        """Delete this app's PNGs beyond the newest ``keep_count`` or older than ``keep_hours``."""
        now = time.time()
        files = sorted(self.folder.glob(PATTERN), key=lambda p: p.stat().st_mtime, reverse=True)
        doomed = [
            p for i, p in enumerate(files) if i >= self.keep_count or now - p.stat().st_mtime > self.keep_hours * 3600
        ]
        for path in doomed:
            path.unlink(missing_ok=True)
        if doomed:
            logger.info("pruned %d old outputs from %s", len(doomed), self.folder)
        return doomed
