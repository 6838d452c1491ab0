"""The library's one exception family. Every error a user can cause or meet derives from ``ErnieNF4Error`` and
says what is wrong and what to do; the app maps the family to readable messages in one place.

The classes also derive from the builtin a caller would expect (``ValueError`` for bad arguments, ``RuntimeError``
for the environment), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class ErnieNF4Error(Exception):
    """Base of every error this library raises on purpose."""


class InvalidArgument(ErnieNF4Error, ValueError):
    """An argument or request field is out of range; the message names it and the allowed values, and ``field``
    (when given) is the name of the argument, for a caller that marks it (the UI puts the message on that field).
    ``key`` and ``values`` (when given) name the message and its values, so an app can say it in its reader's
    language."""

    def __init__(self, message: str, field: str | None = None, key: str | None = None, values: dict | None = None):
        super().__init__(message)
        self.field = field
        self.key = key
        self.values = dict(values or {})

    def __reduce__(self):  # keeps the fields across pickling (a worker process sends errors back as pickles)
        return type(self), (str(self), self.field, self.key, self.values)


class PackageError(ErnieNF4Error, ValueError):
    """A package folder is missing, damaged, unsafe or not an ERNIE-Image pipeline; the message names the file."""


class PackageUnavailable(ErnieNF4Error, RuntimeError):
    """No package could be found, downloaded or built; the message lists what was tried."""


class EnvironmentUnsupported(ErnieNF4Error, RuntimeError):
    """This machine cannot do what was asked (no CUDA GPU, too little memory or disk)."""


class OutOfMemory(ErnieNF4Error, RuntimeError):
    """The GPU ran out of memory; memory was freed and the message says what to change."""


class GenerationCancelled(ErnieNF4Error):
    """A run was stopped (Stop pressed, client gone) after its current step; nothing was kept."""
