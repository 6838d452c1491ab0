"""A generation request: the one dataclass UI, API, CLI and benchmark build, validated at the boundary.

``GenerationRequest`` raises ``InvalidArgument`` (a ``ValueError``) naming the field and its range, with the
field's name in ``err.field``; ``FormValues`` holds the form's fields as the UI or the API sent them, and
``request_from_form`` is their forgiving parser (snaps sizes, strips control characters).
Field names are the diffusers pipeline's and the API's (``num_inference_steps``, ``guidance_scale``).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

from .errors import InvalidArgument

MAX_PROMPT_CHARS = 8000
SIZE_RANGE = (64, 2048)
SIZE_MULTIPLE = 16
STEPS_RANGE = (1, 200)
GUIDANCE_RANGE = (0.0, 30.0)
SEED_LIMIT = 2**63
IMAGES_RANGE = (1, 4)


def _check_int(name: str, value, low: int, high: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer in [{low}, {high}]{extra}, got {value!r}", field=name)
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be in [{low}, {high}]{extra}, got {value}", field=name)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    num_inference_steps: int = 50
    guidance_scale: float = 4.0
    seed: int = 1234
    use_pe: bool = True
    num_images: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidArgument("prompt must be a non-blank text", field="prompt")
        for name in ("prompt", "negative_prompt"):
            text = getattr(self, name)
            if not isinstance(text, str):
                raise InvalidArgument(f"{name} must be text, got {type(text).__name__}", field=name)
            if len(text) > MAX_PROMPT_CHARS:
                raise InvalidArgument(
                    f"{name} must be at most {MAX_PROMPT_CHARS} characters, got {len(text)}", field=name
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise InvalidArgument(
                    f"{name} holds a character that is not valid Unicode text at position {err.start}; retype it",
                    field=name,
                ) from None
        for name in ("width", "height"):
            _check_int(name, getattr(self, name), *SIZE_RANGE, f" and a multiple of {SIZE_MULTIPLE}")
            if getattr(self, name) % SIZE_MULTIPLE:
                raise InvalidArgument(
                    f"{name} must be a multiple of {SIZE_MULTIPLE} in {list(SIZE_RANGE)}, got {getattr(self, name)}",
                    field=name,
                )
        _check_int("num_inference_steps", self.num_inference_steps, *STEPS_RANGE)
        guidance = self.guidance_scale
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise InvalidArgument(
                f"guidance_scale must be a finite number in {list(GUIDANCE_RANGE)}, got {guidance!r}",
                field="guidance_scale",
            )
        if not GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1]:
            raise InvalidArgument(
                f"guidance_scale must be in {list(GUIDANCE_RANGE)}, got {guidance}", field="guidance_scale"
            )
        _check_int("seed", self.seed, 0, SEED_LIMIT - IMAGES_RANGE[1])
        if not isinstance(self.use_pe, bool):
            raise InvalidArgument(f"use_pe must be true or false, got {self.use_pe!r}", field="use_pe")
        _check_int("num_images", self.num_images, *IMAGES_RANGE)

    @property
    def seeds(self) -> list[int]:
        """Image ``i`` uses ``seed + i``: any image can be made again alone from its own seed."""
        return [self.seed + i for i in range(self.num_images)]


_CONTROL = {c: None for c in range(32) if chr(c) not in "\n\t"} | {127: None}


# Numbers as text: ASCII digits only, in Python's and JSON's plain forms ("320", "-2", "4.5", ".5", "1e3"); no
# other scripts' digits ("٣٢٠"), no underscores ("1_0"), no "inf"/"nan" words, which float() and int() would take.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,100}")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]{1,100}(?:\.[0-9]{0,100})?|\.[0-9]{1,100})(?:[eE][+-]?[0-9]{1,4})?")


def _not_whole(name: str, value) -> InvalidArgument:
    return InvalidArgument(
        f"{name} must be a whole number written with the digits 0-9 (like 1024), got {value!r}", field=name
    )


def _not_number(name: str, value) -> InvalidArgument:
    return InvalidArgument(
        f"{name} must be a finite number in {list(GUIDANCE_RANGE)} written with the digits 0-9 (like 4.5), "
        f"got {value!r}",
        field=name,
    )


def _whole(name: str, value) -> int:
    """An integer from a form value: an int, a float holding a whole number, or text of ASCII digits ("1024",
    "1024.0"); never a boolean; else ``InvalidArgument`` naming the field and the form expected."""
    if isinstance(value, bool):
        raise _not_whole(name, value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER_TEXT.fullmatch(text):
            return int(text)  # exact, also beyond a float's 53 bits (seeds)
        if not _DECIMAL_TEXT.fullmatch(text):
            raise _not_whole(name, value)
        number = float(text)
    elif isinstance(value, numbers.Real):
        number = float(value)
    else:
        raise _not_whole(name, value)
    if not math.isfinite(number) or not number.is_integer():
        raise _not_whole(name, value)
    return int(number)


def _real(name: str, value) -> float:
    """A float from a form value: an int or a float, or text of ASCII digits ("4.5"); never a boolean; else
    ``InvalidArgument`` naming the field and the form expected (the range is ``GenerationRequest``'s check)."""
    if isinstance(value, bool):
        raise _not_number(name, value)
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value.strip()):
        return float(value.strip())
    if isinstance(value, numbers.Real) and not isinstance(value, str):
        return float(value)
    raise _not_number(name, value)


@dataclass(frozen=True)
class FormValues:
    """The form's fields as the UI or the API sent them (any type; ``request_from_form`` checks them), in the
    order of the ``/generate`` API. ``randomize_seed``: the UI draws a fresh seed in place of ``seed``."""

    prompt: object
    negative_prompt: object = ""
    width: object = 1024
    height: object = 1024
    num_inference_steps: object = 50
    guidance_scale: object = 4.0
    seed: object = 1234
    randomize_seed: object = False
    use_pe: object = True
    num_images: object = 1


def _clean_texts(form: FormValues, notes: list[str]) -> dict[str, str]:
    """The prompts without control characters (a note for each one changed)."""
    texts = {}
    for name, text in (("prompt", form.prompt), ("negative_prompt", form.negative_prompt or "")):
        if not isinstance(text, str):
            raise InvalidArgument(f"{name} must be text, got {type(text).__name__}", field=name)
        cleaned = text.translate(_CONTROL)
        if cleaned != text:
            notes.append(f"{name}: removed {len(text) - len(cleaned)} control character(s)")
        texts[name] = cleaned
    return texts


def _snapped_sizes(form: FormValues, notes: list[str]) -> dict[str, int]:
    """Width and height as whole numbers, one inside the range snapped to a multiple of 16 (with a note)."""
    sizes = {}
    for name, value in (("width", form.width), ("height", form.height)):
        size = _whole(name, value)
        if SIZE_RANGE[0] <= size <= SIZE_RANGE[1] and size % SIZE_MULTIPLE:
            snapped = min(SIZE_RANGE[1], (size + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE)
            notes.append(f"{name} {size} → {snapped} (a multiple of {SIZE_MULTIPLE})")
            size = snapped
        sizes[name] = size
    return sizes


def request_from_form(form: FormValues) -> tuple[GenerationRequest, list[str]]:
    """A request from UI/API values, forgiving where a user would expect it, with notes of each change:
    control characters are removed from the prompts and a width/height inside the range is snapped to the
    nearest multiple of 16 (1000 -> 1008). Numbers may come as numbers or as text of the digits 0-9; booleans,
    other scripts' digits and underscores are refused. Everything else out of range raises ``InvalidArgument``
    naming the field (``err.field``). ``randomize_seed`` is not read: the caller draws the seed first."""
    notes = []
    texts = _clean_texts(form, notes)
    sizes = _snapped_sizes(form, notes)
    request = GenerationRequest(
        num_inference_steps=_whole("num_inference_steps", form.num_inference_steps),
        guidance_scale=_real("guidance_scale", form.guidance_scale),
        seed=_whole("seed", form.seed),
        use_pe=form.use_pe,
        num_images=_whole("num_images", form.num_images),
        **texts,
        **sizes,
    )
    return request, notes
