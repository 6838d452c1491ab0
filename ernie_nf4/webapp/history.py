"""The history a browser keeps of the images it made: entries the server signed when it made the image (an HMAC of
the file name with a key of this server), so a lookup answers only for images that client was given, never for a
guessed or another user's file name; at most ``LIMIT`` entries are read per lookup."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict
from pathlib import Path

from .png_params import read_png_parameters

LIMIT = 48


class History:
    """Signs the entries of the images this server makes and reads back the ones whose signature checks."""

    def __init__(self, folder: Path, key: bytes | None = None):
        self.folder = Path(folder)
        self._key = key or secrets.token_bytes(32)  # a new key per start: older entries no longer check

    def _signature(self, name: str) -> str:
        return hmac.new(self._key, name.encode("utf-8"), hashlib.sha256).hexdigest()

    def entry(self, path) -> dict:
        """The entry a client keeps for an image this server just saved at ``path``."""
        name = Path(path).name
        return {"file": name, "sig": self._signature(name)}

    def item(self, entry) -> dict | None:
        """A signed entry with the settings read back from its PNG; None when the entry is not one this server
        signed, or its file is gone or unreadable."""
        if not isinstance(entry, dict):
            return None
        name, signature = entry.get("file"), entry.get("sig")
        if not isinstance(name, str) or not isinstance(signature, str):
            return None
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), self._signature(name).encode()):
            return None
        path = self.folder / name
        if Path(name).name != name or not path.is_file():
            return None
        try:
            settings = read_png_parameters(path)
        except ValueError:
            return None
        return {"file": name, "sig": signature, "settings": asdict(settings)}

    def load(self, history) -> tuple[list[dict], int]:
        """The entries of a stored history that check and still have their image, and how many did not."""
        entries = history[:LIMIT] if isinstance(history, list) else []
        items = [item for item in map(self.item, entries) if item is not None]
        return items, len(entries) - len(items)
