"""A generation request: the one dataclass UI, API, CLI and benchmark build, validated at the boundary.

``GenerationRequest`` raises ``InvalidArgument`` (a ``ValueError``) naming the field and its range, with the
field's name in ``err.field``; ``FormValues`` holds the form's fields as the UI or the API sent them, and
``request_from_form`` is their forgiving parser (snaps sizes, strips control characters).
Field names are the diffusers pipeline's and the API's (``num_inference_steps``, ``guidance_scale``).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import re
from dataclasses import dataclass

from .errors import InvalidArgument

_CONTROL = {c: None for c in range(32) if chr(c) not in "\n\t"} | {127: None}

MAX_PROMPT_CHARS = 8000
# The prompt enhancer may write up to 2048 tokens (its tokenizer's limit): more than 8000 characters of some texts
MAX_ENHANCED_CHARS = 32000
ENHANCED_BY = ("user", "pe")  # who wrote a request's enhanced prompt
SIZE_RANGE = (64, 2048)
SIZE_MULTIPLE = 16
STEPS_RANGE = (1, 200)
GUIDANCE_RANGE = (0.0, 30.0)
# Seeds below 2**53, the whole numbers a browser's number field keeps exactly: a seed typed, restored or shown on
# the page is the seed that runs (a larger one would be rounded there and give another image).
SEED_LIMIT = 2**53
IMAGES_RANGE = (1, 4)
MAX_SEED = SEED_LIMIT - IMAGES_RANGE[1]  # the largest seed a request takes: each image after the first adds 1
LORA_SCALE_RANGE = (0.0, 2.0)
MAX_LORAS = 8
MAX_LORA_NAME_CHARS = 100
STRENGTH_RANGE = (0.0, 1.0)
INIT_SIDE_RANGE = (16, 8192)  # an init image's width and height, in pixels
MAX_INIT_PIXELS = 24_000_000  # a 24-megapixel photo; 72 MB of RGB
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what an init image file may be


def _check_int(name: str, value, low: int, high: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer in [{low}, {high}]{extra}, got {value!r}", field=name)
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be in [{low}, {high}]{extra}, got {value}", field=name)


def _check_text(name: str, text, most: int = MAX_PROMPT_CHARS) -> None:
    """A prompt-like field: text of at most ``most`` characters that is valid Unicode."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{name} must be text, got {type(text).__name__}", field=name)
    if len(text) > most:
        raise InvalidArgument(f"{name} must be at most {most} characters, got {len(text)}", field=name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidArgument(
            f"{name} holds a character that is not valid Unicode text at position {err.start}; retype it", field=name
        ) from None


def _check_real(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number in {[low, high]}, got {value!r}", field=name)
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be in {[low, high]}, got {value}", field=name)


@dataclass(frozen=True)
class LoraChoice:
    """One LoRA for a request: a name the app offers and its scale (0 is none, 1 is as trained)."""

    name: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_LORA_NAME_CHARS:
            raise InvalidArgument(
                f"lora must be the name of a LoRA the app offers (1 to {MAX_LORA_NAME_CHARS} characters), got {name!r}",
                field="lora",
                key="lora_name_length",
                values={"name": repr(name)[:120], "most": MAX_LORA_NAME_CHARS},
            )
        if name != name.strip() or any(ord(c) < 32 or ord(c) == 127 for c in name) or set("<>:") & set(name):
            raise InvalidArgument(
                f"lora {name!r}: a LoRA name has no control characters, '<', '>' or ':' and no spaces at its ends",
                field="lora",
                key="lora_name_chars",
                values={"name": repr(name)},
            )
        _check_real("lora_scale", self.scale, *LORA_SCALE_RANGE)


def _init_image_error(image) -> InvalidArgument | None:
    """Why ``image`` cannot start a run (not an RGB PIL image, or too large), as the refusal naming ``init_image``."""
    if getattr(image, "mode", None) != "RGB" or not callable(getattr(image, "tobytes", None)):
        kind = type(image).__name__
        return InvalidArgument(
            f"init_image must be an RGB PIL image, got {kind}",
            field="init_image",
            key="init_image_rgb",
            values={"kind": kind},
        )
    return _init_size_error(image.size)


def _init_size_error(size: tuple[int, int]) -> InvalidArgument | None:
    """The refusal of an image ``size`` (width, height) too large or too small to start from; None when it fits."""
    low, high = INIT_SIDE_RANGE
    if all(low <= side <= high for side in size) and size[0] * size[1] <= MAX_INIT_PIXELS:
        return None
    values = {"low": low, "high": high, "most": f"{MAX_INIT_PIXELS:,}", "size": f"{size[0]}x{size[1]}"}
    if min(size) < low:  # too small on a side: no shrinking helps
        return InvalidArgument(
            f"init_image must be {low} to {high} pixels wide and high, got {size[0]}x{size[1]}; give a larger image",
            field="init_image",
            key="init_image_too_small",
            values=values,
        )
    return InvalidArgument(
        f"init_image must be {low} to {high} pixels wide and high and at most {MAX_INIT_PIXELS:,} pixels, "
        f"got {size[0]}x{size[1]}; make it smaller",
        field="init_image",
        key="init_image_size",
        values=values,
    )


@dataclass(frozen=True, eq=False)
class InitImage:
    """The image an image-to-image run starts from: RGB pixels (a PIL image) and their sha256 (of ``"WxH:"``
    and the RGB bytes, so the same picture has the same hash whatever file it came in). ``InitImage.of`` makes
    one from a file path, a PIL image or an ``H x W x 3`` uint8 array."""

    image: object
    sha256: str

    def __post_init__(self) -> None:
        if (error := _init_image_error(self.image)) is not None:
            raise error
        if not isinstance(self.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise InvalidArgument(f"init_image's sha256 must be 64 hex digits, got {self.sha256!r}", field="init_image")

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @classmethod
    def of(cls, source) -> InitImage:
        """An ``InitImage`` from a path (str or ``os.PathLike``), a PIL image or a uint8 array, converted to RGB;
        ``InvalidArgument`` naming ``init_image`` for anything else, a file that is no image, or one too big."""
        if isinstance(source, InitImage):
            return source
        image = _open_image(source)
        if (error := _init_image_error(image)) is not None:
            raise error
        digest = hashlib.sha256(f"{image.width}x{image.height}:".encode())
        digest.update(image.tobytes())
        return cls(image, digest.hexdigest())


def _open_image(source):
    """``source`` as an RGB PIL image; a file is checked for its size before its pixels are read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, (str, os.PathLike)):
        try:
            with Image.open(source, formats=IMAGE_FORMATS) as image:
                if (error := _init_size_error(image.size)) is not None:
                    raise error
                return _rgb(ImageOps.exif_transpose(image))  # a phone's photo as it is shown
        except InvalidArgument:
            raise
        except Image.DecompressionBombError:
            name = repr(os.path.basename(os.fspath(source)))
            raise InvalidArgument(
                f"init_image {name} has far more than {MAX_INIT_PIXELS:,} pixels; make it smaller",
                field="init_image",
                key="init_image_pixels",
                values={"name": name, "most": f"{MAX_INIT_PIXELS:,}"},
            ) from None
        except (OSError, UnidentifiedImageError, ValueError):
            name = repr(os.path.basename(os.fspath(source)))
            raise InvalidArgument(
                f"init_image {name} could not be read as an image; give a PNG, JPEG or WebP file",
                field="init_image",
                key="init_image_unreadable",
                values={"name": name},
            ) from None
    if isinstance(source, Image.Image):
        return _rgb(source)
    shape = getattr(source, "shape", ())
    if hasattr(source, "__array_interface__") and source.dtype == "uint8" and len(shape) == 3 and shape[2] in (3, 4):
        return Image.fromarray(source[..., :3]).convert("RGB")
    kind = type(source).__name__
    if shape:
        kind += f" {getattr(source, 'dtype', '?')} {tuple(shape)}"
    raise InvalidArgument(
        f"init_image must be an image file's path, a PIL image or an HxWx3 uint8 array, got {kind}",
        field="init_image",
        key="init_image_kind",
        values={"kind": kind},
    )


def _rgb(image):
    """``image`` as 8-bit RGB, as a viewer shows it: 16- and 32-bit grey scaled down (not clipped to white), what
    is transparent on white."""
    from PIL import Image

    if image.mode.startswith("I"):  # I;16, I;16B, I (16-bit PNGs and scans): 0..65535 to 0..255
        import numpy as np

        image = Image.fromarray((np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8))
    elif image.mode == "F":  # floats in 0..1
        import numpy as np

        image = Image.fromarray((np.clip(np.nan_to_num(np.asarray(image)), 0, 1) * 255).round().astype(np.uint8))
    if "A" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


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
    loras: tuple[LoraChoice, ...] = ()  # the LoRAs and their scales, applied together
    init_image: InitImage | None = None  # image-to-image: the image to start from, fitted to width x height
    strength: float = 1.0  # how much of the init image is redrawn: 1 ignores it, 0 gives it back
    # The enhanced prompt given by the user (e.g. the PE's text from ``/enhance``, edited): when set, the PE does not
    # run and this text goes to the text encoder as it is. None: the PE writes it (when ``use_pe``).
    enhanced_prompt: str | None = None
    # Who wrote ``enhanced_prompt``: "user", or "pe" when it is the PE's text of the result a Vary or an Upscale
    # starts from (reused so the PE does not run again; the PNG records it as the PE's).
    enhanced_by: str = "user"

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidArgument("prompt must be a non-blank text", field="prompt")
        for name in ("prompt", "negative_prompt"):
            _check_text(name, getattr(self, name))
        for name in ("width", "height"):
            _check_int(name, getattr(self, name), *SIZE_RANGE, f" and a multiple of {SIZE_MULTIPLE}")
            if getattr(self, name) % SIZE_MULTIPLE:
                raise InvalidArgument(
                    f"{name} must be a multiple of {SIZE_MULTIPLE} in {list(SIZE_RANGE)}, got {getattr(self, name)}",
                    field=name,
                )
        _check_int("num_inference_steps", self.num_inference_steps, *STEPS_RANGE)
        _check_real("guidance_scale", self.guidance_scale, *GUIDANCE_RANGE)
        _check_int("seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.use_pe, bool):
            raise InvalidArgument(f"use_pe must be true or false, got {self.use_pe!r}", field="use_pe")
        _check_int("num_images", self.num_images, *IMAGES_RANGE)
        self._check_loras()
        self._check_init_image()
        self._check_enhanced_prompt()
        if self.enhanced_by not in ENHANCED_BY:
            raise InvalidArgument(f"enhanced_by must be one of {list(ENHANCED_BY)}, got {self.enhanced_by!r}")

    def _check_init_image(self) -> None:
        _check_real("strength", self.strength, *STRENGTH_RANGE)
        if self.init_image is not None and not isinstance(self.init_image, InitImage):
            raise InvalidArgument(
                f"init_image must be an InitImage (InitImage.of(path)), got {type(self.init_image).__name__}",
                field="init_image",
            )
        if self.strength < 1 and self.init_image is None:
            raise InvalidArgument(
                f"init_image is needed at strength {self.strength}: give one, or set strength to 1",
                field="init_image",
                key="strength_needs_image",
                values={"strength": self.strength},
            )

    @property
    def uses_init_image(self) -> bool:
        """Whether the run starts from ``init_image`` (at strength 1 it is plain text-to-image)."""
        return self.init_image is not None and self.strength < 1

    @property
    def steps_run(self) -> int:
        """The denoising steps each image runs: all of them for text-to-image, else the last
        ``round(num_inference_steps * strength)`` (halves round up)."""
        if not self.uses_init_image:
            return self.num_inference_steps
        return math.floor(self.num_inference_steps * self.strength + 0.5)

    def _check_loras(self) -> None:
        if isinstance(self.loras, list):
            object.__setattr__(self, "loras", tuple(self.loras))
        if not isinstance(self.loras, tuple) or not all(isinstance(c, LoraChoice) for c in self.loras):
            raise InvalidArgument(f"loras must be a tuple of LoraChoice, got {self.loras!r}", field="lora")
        if len(self.loras) > MAX_LORAS:
            raise InvalidArgument(
                f"lora: at most {MAX_LORAS} LoRAs at once, got {len(self.loras)}",
                field="lora",
                key="lora_too_many",
                values={"most": MAX_LORAS, "count": len(self.loras)},
            )
        names = [c.name for c in self.loras]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise InvalidArgument(
                f"lora: each LoRA at most once, got {twice[0]!r} twice",
                field="lora",
                key="lora_twice",
                values={"name": repr(twice[0])},
            )

    def _check_enhanced_prompt(self) -> None:
        """None, or a text checked as ``prompt`` is, up to ``MAX_ENHANCED_CHARS`` (the form's empty box is None:
        ``request_from_form``)."""
        text, name = self.enhanced_prompt, "enhanced_prompt"
        if text is None:
            return
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgument(f"{name} must be a non-blank text", field=name)
        _check_text(name, text, MAX_ENHANCED_CHARS)

    @property
    def runs_pe(self) -> bool:
        """Whether the PE is asked to write the enhanced prompt: on, and none given."""
        return self.use_pe and self.enhanced_prompt is None

    @property
    def seeds(self) -> list[int]:
        """Image ``i`` uses ``seed + i``: any image can be made again alone from its own seed."""
        return [self.seed + i for i in range(self.num_images)]


# Numbers as text: ASCII digits only, in Python's and JSON's plain forms ("320", "-2", "4.5", ".5", "1e3"); no
# other scripts' digits ("٣٢٠"), no underscores ("1_0"), no "inf"/"nan" words, which float() and int() would take.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,100}")
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]{1,100}(?:\.[0-9]{0,100})?|\.[0-9]{1,100})(?:[eE][+-]?[0-9]{1,4})?")


def _empty(name: str, example: str) -> InvalidArgument:
    return InvalidArgument(f"{name} is empty; type a number like {example}", field=name)


def _not_whole(name: str, value) -> InvalidArgument:
    if value is None or (isinstance(value, str) and not value.strip()):  # a field left empty on the page
        return _empty(name, "1024")
    return InvalidArgument(
        f"{name} must be a whole number written with the digits 0-9 (like 1024), got {value!r}", field=name
    )


def _not_number(name: str, value, bounds=GUIDANCE_RANGE, example: str = "4.5") -> InvalidArgument:
    if value is None or (isinstance(value, str) and not value.strip()):
        return _empty(name, example)
    return InvalidArgument(
        f"{name} must be a finite number in {list(bounds)} written with the digits 0-9 (like {example}), got {value!r}",
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


def _real(name: str, value, bounds=GUIDANCE_RANGE, example: str = "4.5") -> float:
    """A float from a form value: an int or a float, or text of ASCII digits ("4.5"); never a boolean; else
    ``InvalidArgument`` naming the field and the form expected (the range is the dataclasses' check)."""
    if isinstance(value, bool):
        raise _not_number(name, value, bounds, example)
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value.strip()):
        return float(value.strip())
    if isinstance(value, numbers.Real) and not isinstance(value, str):
        return float(value)
    raise _not_number(name, value, bounds, example)


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
    lora: object = ""  # a name, or a list of names; "" or [] for none
    lora_scale: object = 1.0  # a scale for every LoRA named, or a list with one per name
    init_image: object = None  # a path, a Gradio file dict ({"path": ...}), a PIL image or an array; None for none
    strength: object = 1.0  # image-to-image strength in [0, 1]; 1 ignores init_image
    enhanced_prompt: object = ""  # the enhanced prompt to use as it is ("" or None: the PE writes it)
    previews: object = False  # live previews streamed while the run denoises (the app's, not the request's)


def _lora_choices(form: FormValues) -> tuple[LoraChoice, ...]:
    """The form's LoRAs: ``lora`` a name or a list of names (blank ones skipped), ``lora_scale`` one scale for all
    of them or a list of the same length."""
    names = form.lora
    if names is None or names == "":
        names = []
    elif isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise InvalidArgument(
            f"lora must be a LoRA's name or a list of names, got {form.lora!r}",
            field="lora",
            key="lora_not_names",
            values={"value": repr(form.lora)[:100]},
        )
    keep = [i for i, n in enumerate(names) if n.strip()]
    scales = form.lora_scale
    if isinstance(scales, (list, tuple)):
        if len(scales) != len(names):
            raise InvalidArgument(
                f"lora_scale: give one scale, or one per LoRA named ({len(names)}), got {len(scales)}",
                field="lora_scale",
                key="lora_scale_count",
                values={"names": len(names), "count": len(scales)},
            )
        scales = [_real("lora_scale", scales[i], LORA_SCALE_RANGE, "1") for i in keep]
    else:
        scale = _real("lora_scale", scales, LORA_SCALE_RANGE, "1")
        _check_real("lora_scale", scale, *LORA_SCALE_RANGE)  # also with no LoRA picked: a bad value is refused
        scales = [scale] * len(keep)
    return tuple(LoraChoice(names[i].strip(), scale) for i, scale in zip(keep, scales, strict=True))


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


def _enhanced_text(form: FormValues, notes: list[str]) -> str | None:
    """The form's enhanced prompt without control characters (with a note), None when it is empty or blank."""
    text = form.enhanced_prompt
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise InvalidArgument(f"enhanced_prompt must be text, got {type(text).__name__}", field="enhanced_prompt")
    cleaned = text.translate(_CONTROL)
    if cleaned != text:
        notes.append(f"enhanced_prompt: removed {len(text) - len(cleaned)} control character(s)")
    return cleaned


def _snapped_sizes(form: FormValues, notes: list[str]) -> dict[str, int]:
    """Width and height as whole numbers, one inside the range snapped to a multiple of 16 (with a note)."""
    sizes = {}
    for name, value in (("width", form.width), ("height", form.height)):
        size = _whole(name, value)
        if isinstance(value, float) and not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:  # 1e308 said so, not in digits
            extra = f" and a multiple of {SIZE_MULTIPLE}"
            raise InvalidArgument(f"{name} must be in {list(SIZE_RANGE)}{extra}, got {value:g}", field=name)
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
    naming the field (``err.field``). ``randomize_seed`` is only checked (true, false or None): the caller draws the
    seed first."""
    if form.randomize_seed is not None and not isinstance(form.randomize_seed, bool):
        raise InvalidArgument(
            f"randomize_seed must be true or false, got {form.randomize_seed!r}", field="randomize_seed"
        )
    notes = []
    texts = _clean_texts(form, notes)
    sizes = _snapped_sizes(form, notes)
    request = GenerationRequest(
        num_inference_steps=_whole("num_inference_steps", form.num_inference_steps),
        guidance_scale=_real("guidance_scale", form.guidance_scale),
        seed=_whole("seed", form.seed),
        use_pe=form.use_pe,
        num_images=_whole("num_images", form.num_images),
        loras=_lora_choices(form),
        **_init_fields(form, sizes, notes),
        enhanced_prompt=_enhanced_text(form, notes),
        **texts,
        **sizes,
    )
    return request, notes


def cover_crop(size: tuple[int, int], width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """How an image of ``size`` fills ``width`` x ``height``: the size it is scaled to (covering the target, aspect
    kept) and the centered box cropped from that, as PIL's ``(left, top, right, bottom)``."""
    scale = max(width / size[0], height / size[1])
    scaled = (max(width, round(size[0] * scale)), max(height, round(size[1] * scale)))
    left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    return scaled, (left, top, left + width, top + height)


def _init_fields(form: FormValues, sizes: dict[str, int], notes: list[str]) -> dict:
    """``init_image`` and ``strength`` from the form (a Gradio file dict's path opened), with a note when the image
    is resized and cropped to the run's size. Strength 1 keeps no image: the run is plain text-to-image."""
    strength = _real("strength", 1.0 if form.strength is None else form.strength, STRENGTH_RANGE, "0.6")
    source = form.init_image
    if isinstance(source, dict):
        source = source.get("path")
    if source is None or (isinstance(source, str) and not source) or strength >= 1:
        return {"strength": strength}
    image = InitImage.of(source)
    fits = all(SIZE_RANGE[0] <= size <= SIZE_RANGE[1] for size in sizes.values())
    if fits and image.size != (sizes["width"], sizes["height"]):
        scaled, _ = cover_crop(image.size, sizes["width"], sizes["height"])
        notes.append(
            f"init_image {image.size[0]}x{image.size[1]} → scaled to {scaled[0]}x{scaled[1]}, "
            f"center-cropped to {sizes['width']}x{sizes['height']}"
        )
    return {"init_image": image, "strength": strength}
