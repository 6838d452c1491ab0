"""PNG files that carry their generation parameters, written and read here: the A1111-style ``parameters`` text
chunk (prompt lines, ``Negative prompt:`` lines, a last line of ``Key: value`` pairs). ``parameters_text`` and
``save_png`` write it; ``read_png_parameters`` / ``parse_parameters`` read it back into the form's fields (unknown
keys are ignored; a key that is missing leaves that field as it is). LoRAs are A1111's ``<lora:NAME:SCALE>`` tags at
the end of the prompt; read back from anywhere in the prompt, they leave its text. An image-to-image run adds A1111's
``Denoising strength`` and ``Init image`` (the first 16 hex digits of the init image's sha256): the strength is read
back, the image itself cannot be (only its hash is in the file). An enhanced prompt the user gave (the PE did
not run) is the ``Enhanced prompt`` key, with ``Enhanced prompt by: user``.

Reading is safe on any file: the PNG's chunks are walked here (no image is decoded, so a header claiming billions of
pixels costs nothing, and is refused by name), the ``parameters`` text is inflated to at most
``MAX_PARAMETERS_BYTES`` and refused beyond, and the text is parsed in one pass (linear time, no regular expression
that can backtrack).
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import json
import re
import struct
import zlib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from ..errors import InvalidArgument
from ..request import LORA_SCALE_RANGE, MAX_LORAS, GenerationRequest, LoraChoice

# The longest ``parameters`` text read, in bytes: what ``parameters_text`` writes is far shorter (two prompts of at
# most 8000 characters and the PE's revised prompt); a chunk that inflates beyond it is refused, never inflated whole.
MAX_PARAMETERS_BYTES = 256 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARAMETERS_KEY = b"parameters"
INIT_HASH_DIGITS = 16  # of the init image's sha256, in the parameters


def parameters_text(request: GenerationRequest, seed: int, revised_prompt: str | None, model: str) -> str:
    """A1111-style text: prompt, then ``Negative prompt:``, then ``Key: value`` pairs."""
    pairs = {
        "Steps": request.num_inference_steps,
        "Sampler": "FlowMatchEuler",
        "CFG scale": request.guidance_scale,
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model": model,
        "Prompt enhancer": "on" if request.use_pe else "off",
    }
    if request.enhanced_prompt and request.enhanced_by == "pe":  # the PE's text, reused by a Vary or an Upscale
        revised_prompt = request.enhanced_prompt
    if revised_prompt and (not request.enhanced_prompt or request.enhanced_by == "pe"):
        pairs["Revised prompt"] = json.dumps(revised_prompt, ensure_ascii=False)
    pairs |= enhanced_pairs(request)
    if request.uses_init_image:
        pairs["Denoising strength"] = _exact(request.strength)
        pairs["Init image"] = request.init_image.sha256[:INIT_HASH_DIGITS]
    tags = "".join(f" <lora:{choice.name}:{_exact(choice.scale)}>" for choice in request.loras)
    lines = [request.prompt + tags, f"Negative prompt: {request.negative_prompt}"]
    lines.append(", ".join(f"{key}: {value}" for key, value in pairs.items()))
    return "\n".join(lines)


ENHANCED_KEY, ENHANCED_BY_KEY, BY_USER = "Enhanced prompt", "Enhanced prompt by", "user"


def enhanced_pairs(request: GenerationRequest) -> dict[str, str]:
    """The pairs of a request that gave its enhanced prompt (the PE did not run): the text, and that the user
    gave it; none otherwise."""
    if not request.enhanced_prompt or request.enhanced_by != BY_USER:
        return {}
    return {ENHANCED_KEY: json.dumps(request.enhanced_prompt, ensure_ascii=False), ENHANCED_BY_KEY: BY_USER}


def enhanced_setting(pairs: dict[str, str]) -> str | None:
    """The enhanced prompt a user gave, from a PNG's pairs; None when the PE wrote it or there is none."""
    text = pairs.get(ENHANCED_KEY)
    return text if pairs.get(ENHANCED_BY_KEY) == BY_USER and text and text.strip() else None


def save_png(image, folder: Path, seed: int, parameters: str) -> Path:
    """Save ``image`` under a generated, safe name (time and seed only; nothing from user text)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = Path(folder) / f"ernie-{stamp}-{seed}.png"
    image.save(path, format="PNG", pnginfo=info)
    return path


_NEGATIVE = "Negative prompt:"


@dataclass(frozen=True)
class FormSettings:
    """The form fields a PNG can restore; ``None`` where its text did not say."""

    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    use_pe: bool | None = None
    loras: tuple[LoraChoice, ...] = ()  # the prompt's <lora:NAME:SCALE> tags
    strength: float | None = None  # image-to-image's denoising strength
    init_image_sha256: str | None = None  # the first hex digits of the init image's sha256 (the image is not kept)
    enhanced_prompt: str | None = None  # the enhanced prompt the user gave (``Enhanced prompt by: user``)


# A1111's tag: <lora:NAME>, <lora:NAME:SCALE> or more fields after the scale (its text encoder's, ...). Bounded
# runs of characters that cannot overlap: linear on any text.
_LORA_TAG = re.compile(r"<lora:([^<>:\n]{1,100})(?::([^<>\n]{0,100}))?>")
MAX_TAGS = 64


def _joined(left: str, right: str) -> str:
    """Two pieces of a prompt a tag stood between, with one space (or a comma's own) between them."""
    left, right = left.rstrip(" \t"), right.lstrip(" \t")
    if right.startswith(",") and (not left or left.endswith((",", "\n"))):
        right = right[1:].lstrip(" \t")
    if left and right and not left.endswith("\n") and not right.startswith((",", ".", "\n")):
        return f"{left} {right}"
    return left + right


def _tag_choice(match) -> LoraChoice | None:
    """A tag's LoRA (scale 1 when it gives none, kept in ``LORA_SCALE_RANGE``); None for a name no LoRA has."""
    scale = _number(float, (match[2] or "1").split(":", 1)[0])
    scale = 1.0 if scale is None else min(max(scale, LORA_SCALE_RANGE[0]), LORA_SCALE_RANGE[1])
    try:
        return LoraChoice(match[1].strip(), scale)
    except InvalidArgument:
        return None


def _exact(scale: float) -> str:
    """A scale as plain decimal text that reads back as the same float (1 as "1", 0.1234567 in full, 1e-05 as
    "0.00001": other tools read no exponents)."""
    text = f"{scale:g}" if float(f"{scale:g}") == scale else repr(float(scale))
    return format(Decimal(text), "f") if "e" in text.lower() else text


def prompt_loras(prompt: str) -> tuple[str, tuple[LoraChoice, ...]]:
    """The prompt without its ``<lora:...>`` tags (at most ``MAX_TAGS`` read), and their LoRAs (each name once, at
    most ``MAX_LORAS``)."""
    matches = [match for _, match in zip(range(MAX_TAGS), _LORA_TAG.finditer(prompt), strict=False)]
    if not matches:
        return prompt, ()
    text, loras = prompt[: matches[0].start()], {}
    for match, after in zip(matches, [*matches[1:], None], strict=True):
        text = _joined(text, prompt[match.end() : None if after is None else after.start()])
        if (choice := _tag_choice(match)) is not None and len(loras) < MAX_LORAS:
            loras.setdefault(choice.name, choice)
    return text.strip().rstrip(","), tuple(loras.values())


_KEY_RUN = re.compile(r"[\w \-/]*")  # matched on the reversed text before a colon: anchored, linear
MAX_PAIRS = 256  # A1111 writes a few dozen; more is not a file of ours or theirs


def _key_before(line: str, start: int, colon: int) -> str:
    """The key ending at ``colon``: the run of word characters, spaces, '-' and '/' before it (not before
    ``start``), from its first word character; "" when there is none."""
    run = _KEY_RUN.match(line[start:colon][::-1]).group()[::-1]
    return run.lstrip(" -/").strip()


def _closing_quotes(line: str) -> list[int]:
    """Positions of the double quotes that are not escaped (an even run of backslashes before them), in order:
    where a JSON string opened at any quote ends, found by bisection. Each backslash is counted once."""
    quotes, index = [], line.find('"')
    while index >= 0:
        run = index
        while run > 0 and line[run - 1] == "\\":
            run -= 1
        if (index - run) % 2 == 0:
            quotes.append(index)
        index = line.find('"', index + 1)
    return quotes


def parse_pairs(line: str) -> dict[str, str]:
    """The ``Key: value`` pairs of A1111's last line, in one pass (linear time on any text; at most ``MAX_PAIRS``
    read). A value is a JSON-quoted string (which may hold commas; decoded when it is valid JSON) followed by a
    comma or the end, else the text up to the next comma."""
    pairs, quotes, position, end = {}, _closing_quotes(line), 0, len(line)
    for _ in range(MAX_PAIRS):
        colon = line.find(":", position)
        if colon < 0:
            break
        key, start = _key_before(line, position, colon), colon + 1
        while start < end and line[start].isspace():
            start += 1
        value, position = None, None
        if start < end and line[start] == '"':
            found = bisect.bisect_right(quotes, start)
            close = quotes[found] if found < len(quotes) else -1
            if close > start + 1 and (close + 1 == end or line[close + 1] == ","):
                value, position = line[start : close + 1], close + 2
        if value is None:
            comma = line.find(",", start)
            comma = end if comma < 0 else comma
            value, position = line[start:comma], comma + 1
        if key:
            pairs[key] = _decoded(value.strip())
    return pairs


def _decoded(value: str) -> str:
    """A JSON-quoted value decoded; anything else (or not JSON after all) as written."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        with contextlib.suppress(json.JSONDecodeError):
            decoded = json.loads(value)
            return decoded if isinstance(decoded, str) else value
    return value


def _number(kind, value):
    """``kind(value)`` for a value written with the digits 0-9 (``int("٣٢٠")`` would read 320), else None."""
    if not isinstance(value, str) or not re.fullmatch(r"[+-]?[0-9]{1,30}(\.[0-9]{1,30})?", value.strip()):
        return None
    try:
        return kind(value.strip())
    except ValueError:
        return None


def parse_parameters(text: str) -> FormSettings:
    """``FormSettings`` from A1111 ``parameters`` text: prompt lines, ``Negative prompt:`` lines, ``Key: value`` line.
    Raises ``ValueError`` when the text holds no prompt."""
    lines = text.strip("\n").split("\n")
    pairs = {}
    if re.match(r"\s*(Steps|Seed|Size|CFG scale):", lines[-1]):
        pairs = parse_pairs(lines.pop())
    prompt_lines, negative_lines = lines, []
    for index, line in enumerate(lines):
        if line.startswith(_NEGATIVE):
            prompt_lines = lines[:index]
            negative_lines = [line[len(_NEGATIVE) :].strip(), *lines[index + 1 :]]
            break
    prompt, loras = prompt_loras("\n".join(prompt_lines).strip())
    if not prompt:
        raise _refused("png_no_prompt", "the PNG's parameters hold no prompt")
    width = height = None
    if match := re.fullmatch(r"([0-9]{1,5}) ?x ?([0-9]{1,5})", pairs.get("Size", "")):
        width, height = int(match[1]), int(match[2])
    pe = pairs.get("Prompt enhancer")
    return FormSettings(
        prompt=prompt,
        negative_prompt="\n".join(negative_lines).strip(),
        width=width,
        height=height,
        num_inference_steps=_number(int, pairs.get("Steps")),
        guidance_scale=_number(float, pairs.get("CFG scale")),
        seed=_number(int, pairs.get("Seed")),
        use_pe=None if pe is None else pe == "on",
        loras=loras,
        **_init_settings(pairs),
        enhanced_prompt=enhanced_setting(pairs),
    )


def _init_settings(pairs: dict[str, str]) -> dict:
    """``strength`` (kept in [0, 1]) and the init image's hash prefix from an image-to-image run's pairs."""
    strength = _number(float, pairs.get("Denoising strength"))
    if strength is None:
        return {}
    digest = pairs.get("Init image", "")
    return {
        "strength": min(max(strength, 0.0), 1.0),
        "init_image_sha256": digest if re.fullmatch(r"[0-9a-f]{1,64}", digest) else None,
    }


def read_png_parameters(path: str | Path) -> FormSettings:
    """The settings in a PNG's ``parameters`` chunk; ``InvalidArgument`` (a ``ValueError``) naming the file when
    it is not a PNG, is damaged, claims more pixels than Pillow opens, holds a text longer than
    ``MAX_PARAMETERS_BYTES``, or has no such chunk."""
    return parse_parameters(_png_text(path))


def _png_text(path: str | Path) -> str:
    """A PNG's ``parameters`` text, refused as ``read_png_parameters`` says."""
    name = Path(path).name
    try:
        with open(path, "rb") as file:
            text = _parameters_chunk(file, name)
    except OSError as err:
        raise _refused("png_unreadable", f"{name} could not be read ({err.strerror or err})", name=name) from None
    if text is None or not text.strip():
        raise _refused("png_none", f"{name} carries no generation parameters (no 'parameters' text chunk)", name=name)
    return text


def _parameters_chunk(file, name: str) -> str | None:
    """The text of the first ``parameters`` chunk (tEXt, zTXt or iTXt), walking the chunks to IEND and reading no
    other chunk's data; None when there is none."""
    if file.read(8) != PNG_SIGNATURE:
        message = f"{name} is not a PNG file (it lacks the PNG signature); drop a PNG this app saved"
        raise _refused("png_not_png", message, name=name)
    position = len(PNG_SIGNATURE)
    while len(head := file.read(8)) == 8:
        length, kind = struct.unpack(">I4s", head)
        if length > 2**31 - 1:
            raise _damaged(name, kind)
        if position == len(PNG_SIGNATURE):
            _check_header(file, name, kind, length)
        if kind == b"IEND":
            break
        key = PARAMETERS_KEY + b"\0"
        if kind in (b"tEXt", b"zTXt", b"iTXt") and length > len(key) and file.read(len(key)) == key:
            file.seek(position + 8)
            return _text_chunk(file, name, kind, length)
        position += 12 + length
        file.seek(position)
    return None


def _refused(key: str, message: str, **values) -> InvalidArgument:
    """A refusal whose ``key`` and ``values`` let the app say it in the reader's language (``webapp.i18n``)."""
    err = InvalidArgument(message)
    err.key, err.values = key, values
    return err


def _damaged(name: str, kind: bytes) -> InvalidArgument:
    chunk = repr(kind.decode("latin-1", "replace"))
    message = f"{name} is a damaged PNG (its {chunk} chunk is broken); drop a PNG this app saved"
    return _refused("png_damaged", message, name=name, chunk=chunk)


def _check_header(file, name: str, kind: bytes, length: int) -> None:
    """The IHDR chunk: a size that Pillow would open (a header claiming more pixels is refused by name, as Pillow
    refuses it as a possible decompression bomb)."""
    from PIL import Image

    data = file.read(13)
    if kind != b"IHDR" or length != 13 or len(data) != 13:
        raise _damaged(name, kind)
    width, height = struct.unpack(">II", data[:8])
    limit = Image.MAX_IMAGE_PIXELS
    if not width or not height:
        raise _damaged(name, kind)
    if limit is not None and width * height > limit:
        message = (
            f"{name} claims {width}x{height} pixels, more than the {int(limit):,} this app opens (such a header can "
            "be a decompression bomb); its settings were not read. Drop a PNG this app saved."
        )
        raise _refused("png_bomb", message, name=name, width=width, height=height, limit=f"{int(limit):,}")


def _too_long(name: str) -> InvalidArgument:
    message = (
        f"{name}'s 'parameters' text is longer than {MAX_PARAMETERS_BYTES:,} bytes, far more than this app writes; "
        "it was not read"
    )
    return _refused("png_too_long", message, name=name, limit=f"{MAX_PARAMETERS_BYTES:,}")


def _text_chunk(file, name: str, kind: bytes, length: int) -> str:
    """The text of a tEXt, zTXt or iTXt chunk whose key is ``parameters`` (``file`` at its data), checked against
    its CRC and inflated to at most ``MAX_PARAMETERS_BYTES``."""
    if length > MAX_PARAMETERS_BYTES + 1024:
        raise _too_long(name)
    data, crc = file.read(length), file.read(4)
    if len(data) != length or len(crc) != 4 or zlib.crc32(kind + data) != struct.unpack(">I", crc)[0]:
        raise _damaged(name, kind)
    body = data[len(PARAMETERS_KEY) + 1 :]
    try:
        if kind == b"tEXt":
            text = body.decode("latin-1")
        elif kind == b"zTXt":
            text = _inflate(body[1:], name, kind, method=body[0]).decode("latin-1")
        else:  # iTXt: compression flag and method, language tag, translated key, text
            flag, method, fields = body[0], body[1], body[2:].split(b"\0", 2)
            if len(fields) != 3:
                raise _damaged(name, kind)
            text = (_inflate(fields[2], name, kind, method) if flag else fields[2]).decode("utf-8")
    except (IndexError, UnicodeDecodeError):
        raise _damaged(name, kind) from None
    if len(text) > MAX_PARAMETERS_BYTES:
        raise _too_long(name)
    return text


def _inflate(data: bytes, name: str, kind: bytes, method: int) -> bytes:
    """At most ``MAX_PARAMETERS_BYTES`` of the deflate stream ``data``: a stream that would give more is refused
    once that much came out, never inflated whole."""
    if method != 0:
        raise _damaged(name, kind)
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_PARAMETERS_BYTES + 1)
    except zlib.error:
        raise _damaged(name, kind) from None
    if len(out) > MAX_PARAMETERS_BYTES:
        raise _too_long(name)
    return out


REVISED_KEY = "Revised prompt"


def read_result_parameters(path: str | Path) -> tuple[FormSettings, str | None]:
    """A result's settings (``read_png_parameters``) and the revised prompt the PE wrote for it (None when the PE
    did not run, or the file does not say): what Vary and Upscale run again."""
    text = _png_text(path)
    settings = parse_parameters(text)
    last = text.strip("\n").rsplit("\n", 1)[-1]
    revised = parse_pairs(last).get(REVISED_KEY) if re.match(r"\s*(Steps|Seed|Size|CFG scale):", last) else None
    return settings, revised if revised and revised.strip() else None
