"""The one place exceptions become what a user reads: the library's error family keeps its message (it says
what to do); anything else is logged with its traceback for the operator and shown as a short generic line."""

from __future__ import annotations

import logging

from ..errors import ErnieNF4Error, GenerationCancelled

logger = logging.getLogger(__name__)
STOPPED = "Stopped. Nothing was kept from this run."


def user_message(err: BaseException) -> str:
    if isinstance(err, GenerationCancelled):
        return STOPPED
    if isinstance(err, ErnieNF4Error):
        return str(err)
    if isinstance(err, (ValueError, TypeError)):  # a bad value that reached a library below us
        logger.warning("request refused: %s", err)
        return f"This request could not run: {err}"
    logger.error("unexpected error", exc_info=err)
    return f"Internal error ({type(err).__name__}); the server log has the details. The next request can run."
