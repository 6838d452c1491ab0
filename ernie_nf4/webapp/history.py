"""The history a browser keeps of the images it made: entries the server signed when it made the image (an HMAC of
the file name with a key of this server), so a lookup answers only for images that client was given, never for a
guessed or another user's file name; at most ``LIMIT`` entries are read per lookup.

The app keeps its key in a file (``load_key``, ``--history-key-file``), so that entries outlive a restart; the
browser's copy of the history is encrypted with a secret derived from it (``History.browser_secret``). A key made
for one start only (no file) is the library's default."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import asdict
from pathlib import Path

from ..errors import InvalidArgument
from .png_params import read_png_parameters

LIMIT = 48
DEFAULT_KEY_FILE = Path("~/.cache/ernie-nf4/history-key")
KEY_BYTES = 32
GONE, UNSIGNED = "gone", "unsigned"  # why an entry is not shown: its file is gone; not signed with this key


class History:
    """Signs the entries of the images this server makes and reads back the ones whose signature checks."""

    def __init__(self, folder: Path, key: bytes | None = None):
        self.folder = Path(folder)
        self._key = key or secrets.token_bytes(KEY_BYTES)  # without one kept in a file: older entries do not check

    @property
    def browser_secret(self) -> str:
        """The secret the page encrypts its stored history with (Gradio sends it to the browser: derived from the
        key one way, it tells nothing of the key)."""
        return hmac.new(self._key, b"ernie-nf4 browser storage", hashlib.sha256).hexdigest()

    def _signature(self, name: str) -> str:
        return hmac.new(self._key, name.encode("utf-8"), hashlib.sha256).hexdigest()

    def entry(self, path) -> dict:
        """The entry a client keeps for an image this server just saved at ``path``."""
        name = Path(path).name
        return {"file": name, "sig": self._signature(name)}

    def looked_up(self, entry) -> dict | str:
        """A signed entry with the settings read back from its PNG; else why not: ``UNSIGNED`` for an entry this
        key did not sign, ``GONE`` for one whose file is gone or unreadable."""
        if not isinstance(entry, dict):
            return UNSIGNED
        name, signature = entry.get("file"), entry.get("sig")
        if not isinstance(name, str) or not isinstance(signature, str):
            return UNSIGNED
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), self._signature(name).encode()):
            return UNSIGNED
        path = self.folder / name
        if Path(name).name != name or not path.is_file():
            return GONE
        try:
            settings = read_png_parameters(path)
        except ValueError:
            return GONE
        return {"file": name, "sig": signature, "settings": asdict(settings)}

    def item(self, entry) -> dict | None:
        """``looked_up``'s entry, or None when it is not shown."""
        found = self.looked_up(entry)
        return found if isinstance(found, dict) else None

    def load(self, history) -> tuple[list[dict], dict[str, int]]:
        """The entries of a stored history that check and still have their image, and how many did not, by why
        (``GONE``, ``UNSIGNED``)."""
        entries = history[:LIMIT] if isinstance(history, list) else []
        found = [self.looked_up(entry) for entry in entries]
        return [each for each in found if isinstance(each, dict)], {why: found.count(why) for why in (GONE, UNSIGNED)}


def load_key(path: str | Path = DEFAULT_KEY_FILE) -> bytes:
    """The history key kept in the file ``path`` (hex text), made there first when there is none: written whole with
    mode 0600 beside it, then linked into place, so that starts that race all read the one that landed. A file that
    holds no key is refused (``InvalidArgument``, field ``history_key_file``); deleting it makes a new key, and the
    entries signed with the old one no longer check."""
    path = Path(path).expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_key(path)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise InvalidArgument(
            f"history key file {str(path)!r} holds no key ({KEY_BYTES * 2} hex digits); delete it to make a new one "
            "(the history browsers kept then cannot be read)",
            field="history_key_file",
        )
    return key


def _create_key(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(secrets.token_hex(KEY_BYTES) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(tmp, path)  # never over a key another start put there first
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
