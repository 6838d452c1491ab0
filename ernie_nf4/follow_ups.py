"""Vary and Upscale: the requests that start from a result, made from its request and the image chosen.

- Vary (subtle, strong): the same prompt and settings at the image's own size, the result as the init image at
  strength ``VARY_SUBTLE`` (0.3) or ``VARY_STRONG`` (0.6), and a new seed.
- Upscale x2: the image at twice its width and height (at most ``SIZE_RANGE``'s 2048 on the longer side, the
  aspect kept, multiples of 16) redrawn lightly (strength ``UPSCALE_STRENGTH``) with the same seed, prompt and
  steps: one image. Above the memory mode's budget the run goes in tiles (``runtime.upscale``).

Both reuse the enhanced prompt the result was made with (the user's, or the one the PE wrote), so the prompt
enhancer does not run again and the text stays the same.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

from .errors import InvalidArgument
from .request import SIZE_MULTIPLE, SIZE_RANGE, GenerationRequest, InitImage

VARY_SUBTLE = 0.3
VARY_STRONG = 0.6
UPSCALE_STRENGTH = 0.3
UPSCALE_FACTOR = 2
MIN_GROWTH = 1.25  # an upscale that grows a side less than this is refused: a whole tiled run for next to nothing
NEW_SEED_LIMIT = 2**32  # a new seed is drawn below this, as the page's random seed is


def _kept_prompt(request: GenerationRequest, revised_prompt: str | None) -> dict:
    """The enhanced prompt the result was made with, and who wrote it: the user's, else the PE's revised prompt
    when the PE ran (``enhanced_prompt`` and ``enhanced_by`` for the new request)."""
    if request.enhanced_prompt:
        return {"enhanced_prompt": request.enhanced_prompt, "enhanced_by": request.enhanced_by}
    if request.use_pe and revised_prompt and revised_prompt.strip():
        return {"enhanced_prompt": revised_prompt, "enhanced_by": "pe"}
    return {"enhanced_prompt": None, "enhanced_by": "user"}


def vary_request(
    request: GenerationRequest,
    image,
    strength: float = VARY_SUBTLE,
    seed: int | None = None,
    revised_prompt: str | None = None,
) -> GenerationRequest:
    """Vary ``image`` (a result of ``request``; a path, a PIL image or an ``InitImage``): ``request`` with the
    image as its init image at ``strength`` and ``seed`` (None: a new random one, different from the result's).
    ``revised_prompt``: the PE's text for the result, reused as the enhanced prompt."""
    if seed is None:
        seed = secrets.randbelow(NEW_SEED_LIMIT)
        while seed == request.seed:
            seed = secrets.randbelow(NEW_SEED_LIMIT)
    init = InitImage.of(image)
    width, height = (_snapped(side) for side in init.size)  # the image's own size, whatever its PNG text says
    return replace(
        request,
        width=width,
        height=height,
        init_image=init,
        strength=strength,
        seed=seed,
        **_kept_prompt(request, revised_prompt),
    )


def _snapped(side: int) -> int:
    """``side`` to the nearest multiple of 16 in ``SIZE_RANGE``."""
    low, high = SIZE_RANGE
    return min(high, max(low, (side + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE))  # halves up


def upscaled_size(width: int, height: int) -> tuple[int, int]:
    """``width`` x ``height`` times ``UPSCALE_FACTOR``, scaled down to ``SIZE_RANGE``'s largest side when it
    would pass it (the aspect kept), each side a multiple of 16. ``InvalidArgument`` naming ``init_image`` when
    a side would grow less than ``MIN_GROWTH`` times (the image is at, or near, the largest size)."""
    largest = SIZE_RANGE[1]
    scale = min(UPSCALE_FACTOR, largest / max(width, height))
    size = tuple(min(largest, max(SIZE_MULTIPLE, round(side * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE)) for side in
                 (width, height))  # fmt: skip
    if size[0] < width * MIN_GROWTH or size[1] < height * MIN_GROWTH:
        raise InvalidArgument(
            f"init_image is {width}x{height}: Upscale x2 makes images of at most {largest} pixels on the longer side, "
            "so this one would hardly grow; upscale a smaller result",
            field="init_image",
            key="upscale_largest",
            values={"size": f"{width}x{height}", "largest": largest},
        )
    return size


def upscale_request(request: GenerationRequest, image, revised_prompt: str | None = None) -> GenerationRequest:
    """Upscale ``image`` (a result of ``request``; a path, a PIL image or an ``InitImage``) x2: ``request`` at the
    image's ``upscaled_size``, with the image as its init image at ``UPSCALE_STRENGTH``, the same seed, one image.
    ``revised_prompt``: the PE's text for the result, reused as the enhanced prompt."""
    init = InitImage.of(image)
    width, height = upscaled_size(*init.size)
    return replace(
        request,
        width=width,
        height=height,
        init_image=init,
        strength=UPSCALE_STRENGTH,
        num_images=1,
        **_kept_prompt(request, revised_prompt),
    )
