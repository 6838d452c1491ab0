"""The one place exceptions and the library's notes become what a user reads, in the user's language: the library's
error family keeps its message (it says what to do), a refused form field is said again by its field and kind;
anything else is logged with its traceback for the operator and shown as a short generic line."""

from __future__ import annotations

import logging
import re

from ..errors import ErnieNF4Error, GenerationCancelled, InvalidArgument
from .i18n import field_name, say

logger = logging.getLogger(__name__)

# The library's refusals (``request.GenerationRequest``, ``request_from_form``) by kind: the pattern after the
# field's name, and the message key that says it again with the pattern's named groups.
_REFUSALS = (
    (r"must be a whole number written with the digits 0-9 \(like (?P<like>[^)]+)\), got (?P<value>.+)$",
     "refuse_digits_whole"),
    (r"must be a finite number in \[(?P<low>[^,]+), (?P<high>[^\]]+)\] written with the digits 0-9 "
     r"\(like (?P<like>[^)]+)\), got (?P<value>.+)$", "refuse_digits_number"),
    (r"is empty; type a number like (?P<like>\S+)$", "refuse_empty_number"),
    (r"must be a non-blank text$", "refuse_blank"),
    (r"must be text, got (?P<value>.+)$", "refuse_text"),
    (r"must be at most (?P<limit>\d+) characters, got (?P<value>\d+)$", "refuse_long"),
    (r"holds a character that is not valid Unicode text at position (?P<value>\d+); retype it$", "refuse_unicode"),
    (r"must be a multiple of (?P<multiple>\d+) in \[(?P<low>[^,]+), (?P<high>[^\]]+)\], got (?P<value>.+)$", None),
    (r"must be (?:an integer |a finite number )?in \[(?P<low>[^,]+), (?P<high>[^\]]+)\]"
     r"(?: and a multiple of (?P<multiple>\d+))?, got (?P<value>.+)$", None),
    (r"must be a whole number, got (?P<value>.+)$", "refuse_whole"),
    (r"must be true or false, got (?P<value>.+)$", "refuse_bool"),
)  # fmt: skip
_NOTES = (
    (re.compile(r"^(?P<field>\w+) (?P<size>\d+) → (?P<snapped>\d+) \(a multiple of (?P<multiple>\d+)\)$"),
     "note_snapped"),
    (re.compile(r"^(?P<field>\w+): removed (?P<count>\d+) control character\(s\)$"), "note_control"),
    (re.compile(r"^(?P<field>\w+) (?P<size>\d+x\d+) → scaled to (?P<scaled>\d+x\d+), center-cropped to "
                r"(?P<target>\d+x\d+)$"), "note_fitted"),
)  # fmt: skip

# The library's errors a user meets most (no GPU, out of memory), by their English text: the key that says them.
_ERRORS = (
    (re.compile(r"^No CUDA GPU found: ERNIE-Image NF4 needs an NVIDIA GPU"), "no_gpu_reason"),
    (re.compile(r"^Out of GPU memory at (?P<width>\d+)x(?P<height>\d+) with (?P<images>\d+) image"), "oom_run"),
    (re.compile(r"^Out of GPU memory while loading the model"), "oom_load"),
)


def refusal(err: InvalidArgument, lang: str = "en") -> str:
    """A refused field's message in ``lang``: in English the library's text with its field named as the page names
    it (``_english``); else said by its field and kind (the library's own text when its kind is not one of
    ``_REFUSALS``)."""
    text, field = str(err), err.field
    if lang == "en":
        return _english(text, field)
    if getattr(err, "key", None):  # a refusal that carries its own key (a PNG's, say)
        return say(err.key, lang, **err.values)
    if not field or not text.startswith(f"{field} "):
        return text
    rest = text[len(field) + 1 :]
    for pattern, key in _REFUSALS:
        if match := re.match(pattern, rest):
            values = match.groupdict()
            if key is None:
                key = "refuse_multiple" if values.get("multiple") else "refuse_range"
            return say(key, lang, field=field_name(field, lang), **values)
    return text


def _english(text: str, field: str | None) -> str:
    """The library's English ``text`` with the field it starts with (``init_image must …``, ``init_image's …``,
    ``lora_scale: …``) named as the English page names it (``Start image (init_image) must …``)."""
    if field and re.match(rf"{re.escape(field)}(?:'s)?[ :]", text):
        return field_name(field, "en") + text[len(field) :]
    return text


def note(text, lang: str = "en") -> str:
    """One of ``request_from_form``'s notes (a size snapped, control characters removed) in ``lang``; or a note of
    the app's, given as a function of the language (``functools.partial(say, key, **values)``)."""
    if callable(text):
        return text(lang)
    for pattern, key in _NOTES:
        if match := pattern.match(text):
            values = match.groupdict()
            return say(key, lang, **{**values, "field": field_name(values["field"], lang)})
    return text


def user_message(err: BaseException, lang: str = "en") -> str:
    if isinstance(err, GenerationCancelled):
        return say("stopped", lang)
    if isinstance(err, InvalidArgument):
        return refusal(err, lang)
    if isinstance(err, ErnieNF4Error):
        text = str(err)
        for pattern, key in _ERRORS if lang != "en" else ():
            if match := pattern.match(text):
                return say(key, lang, **match.groupdict())
        return text
    if isinstance(err, (ValueError, TypeError)):  # a bad value that reached a library below us
        logger.warning("request refused: %s", err)
        return say("request_refused", lang, reason=err)
    logger.error("unexpected error", exc_info=err)
    return say("internal_error", lang, kind=type(err).__name__)


def run_summary(result, notes=(), provenance: str | None = None, lang: str = "en") -> str:
    """The run info box, one line in ``lang``: seeds, per-stage seconds (the PE's only when it was asked for), the
    PE's tokens (or that the enhanced prompt was the user's), peak GPU memory, the package's provenance when this
    project's metadata did not vouch for it, the notes."""
    s = result.seconds
    per_step = 1000 * s.denoising / max(1, result.request.steps_run * len(result.seeds))
    parts = [say("run_seed", lang, seeds=", ".join(map(str, result.seeds)))]
    if result.request.runs_pe:
        parts.append(say("run_pe", lang, seconds=f"{s.pe:.2f}"))
    parts += [
        say("run_text", lang, seconds=f"{s.text_encoding:.2f}"),
        say("run_denoise", lang, seconds=f"{s.denoising:.2f}", ms=f"{per_step:.0f}"),
        say("run_vae", lang, seconds=f"{s.vae_decode:.2f}"),
        say("run_total", lang, seconds=f"{s.total:.2f}"),
    ]
    if (e := result.enhancement) is not None:
        parts.append(
            say("run_pe_cut", lang, tokens=e.tokens, cap=e.cap) if e.cut else say("run_pe_wrote", lang, tokens=e.tokens)
        )
    elif result.request.enhanced_prompt:
        parts.append(say("run_pe_yours" if result.request.enhanced_by == "user" else "run_pe_reused", lang))
    elif result.prompt_cached and result.revised_prompt:
        parts.append(say("run_pe_cached", lang))
    if result.peak_vram:
        parts.append(say("run_peak", lang, gib=f"{result.peak_vram.reserved_gib:.2f}"))
    if loras := result.request.loras:
        parts.append(say("run_lora", lang, loras=", ".join(f"{c.name} × {c.scale:g}" for c in loras)))
    if provenance and provenance.startswith("not "):
        parts.append(say("run_package", lang, provenance=provenance))
    return " · ".join([*parts, *(note(text, lang) for text in notes)])


CAPTION_PROMPT_CHARS = 80


def caption(width: int, height: int, seed: int, prompt: str = "", lang: str = "en") -> str:
    """An image's caption: size and seed, then the start of its prompt (Gradio's gallery also makes the caption the
    image's alt text)."""
    text = say("caption", lang, width=width, height=height, seed=seed)
    prompt = " ".join(str(prompt or "").split())
    if len(prompt) > CAPTION_PROMPT_CHARS:
        prompt = prompt[: CAPTION_PROMPT_CHARS - 1] + "…"
    return f"{text} · {prompt}" if prompt else text
