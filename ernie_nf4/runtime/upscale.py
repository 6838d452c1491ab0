"""Image-to-image above the memory mode's budget, in overlapping tiles (what Upscale x2 runs at 2048x2048).

The modes' memory needs are measured at 1024x1024 (``memory_modes.NEEDS_GIB``); an image-to-image request larger
than that (``BUDGET_PIXELS``) runs in tiles of at most that many pixels, so the transformer, the VAE encode and the
VAE decode never see more than what each mode was measured at. Each tile is the init image fitted to the full size
and cropped, encoded, denoised from the crop of the full image's seeded noise (the same noise an untiled run would
use, so overlapping tiles start alike), decoded, and blended in pixel space with weights that ramp linearly across
the overlaps (no visible seam). Text-to-image is never tiled. Tiles see only their own part of the prompt's picture,
so a tiled image differs from what an untiled run would give; it is as reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import GenerationCancelled
from ..request import SIZE_MULTIPLE, GenerationRequest
from .denoising import initial_latents
from .image_to_image import denoise_from, encode, fitted
from .memory_modes import MemoryMode
from .prompt import check_cancel
from .vae_decode import decode

# Pixels one image-to-image pass may cover, per memory mode: the size the mode's memory need is measured at.
BUDGET_PIXELS = {MemoryMode.ALL_ON_GPU: 1024 * 1024, MemoryMode.LOW_VRAM: 1024 * 1024}
DEFAULT_BUDGET_PIXELS = 1024 * 1024  # model-offload, and any mode not named above
OVERLAP_FRACTION = 4  # neighbouring tiles overlap by at least a quarter of a tile's side (256 px at 1024)


@dataclass(frozen=True)
class TilePlan:
    """Tiles on a grid over the full image: their left and top edges (pixels, multiples of ``SIZE_MULTIPLE``) and
    their size; one tile when the image is within the budget."""

    lefts: tuple[int, ...]
    tops: tuple[int, ...]
    width: int
    height: int

    @property
    def count(self) -> int:
        return len(self.lefts) * len(self.tops)

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Each tile as PIL's ``(left, top, right, bottom)``, row by row."""
        return [(x, y, x + self.width, y + self.height) for y in self.tops for x in self.lefts]

    def weights(self, index: int):
        """Tile ``index``'s blend weights (``height x width x 1``): 1 inside, rising from near 0 across its overlap
        with the tile before it, falling across its overlap with the tile after it, on each axis."""
        import numpy as np

        row, column = divmod(index, len(self.lefts))
        return np.outer(_ramp(self.tops, row, self.height), _ramp(self.lefts, column, self.width))[:, :, None]


def _ramp(starts: tuple[int, ...], index: int, side: int):
    import numpy as np

    position, weight = np.arange(side) + 0.5, np.ones(side)
    if index > 0:
        weight = np.minimum(weight, position / (starts[index - 1] + side - starts[index]))
    if index < len(starts) - 1:
        weight = np.minimum(weight, (side - position) / (starts[index] + side - starts[index + 1]))
    return weight


def budget_pixels(memory_mode) -> int:
    """The most pixels one pass runs at in ``memory_mode`` (a ``MemoryMode``)."""
    return BUDGET_PIXELS.get(memory_mode, DEFAULT_BUDGET_PIXELS)


def _starts(length: int, side: int) -> tuple[int, ...]:
    """Where tiles of ``side`` start along ``length``: as few as overlap by at least ``side / OVERLAP_FRACTION``,
    spread evenly, each on the ``SIZE_MULTIPLE`` grid."""
    if length <= side:
        return (0,)
    step = side - side // OVERLAP_FRACTION
    count = math.ceil((length - side) / step) + 1
    grid = (length - side) // SIZE_MULTIPLE
    return tuple(round(grid * i / (count - 1)) * SIZE_MULTIPLE for i in range(count))


def plan_tiles(width: int, height: int, budget: int) -> TilePlan:
    """The tiles covering ``width`` x ``height``: the whole image within ``budget`` pixels, else square tiles of
    the largest ``SIZE_MULTIPLE`` side within it (narrower images: as wide as the image), overlapping."""
    if width * height <= budget:
        return TilePlan((0,), (0,), width, height)
    side = max(SIZE_MULTIPLE, math.isqrt(budget) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    tile_w, tile_h = min(side, width), min(side, height)
    return TilePlan(_starts(width, tile_w), _starts(height, tile_h), tile_w, tile_h)


def request_tiles(request: GenerationRequest, budget: int) -> TilePlan:
    """The tiles ``request`` runs in: one unless it is image-to-image larger than ``budget`` pixels (text-to-image
    is never tiled)."""
    if not request.uses_init_image:
        return TilePlan((0,), (0,), request.width, request.height)
    return plan_tiles(request.width, request.height, budget)


def tile_step_callback(on_step, cancel, done_before: int, total: int):
    """The step-end callback of one tile: ``on_step(done, total)`` counted over every tile of every image, then a
    stop when ``cancel`` is set."""

    def callback(_pipe, index, _timestep, tensors):
        if on_step is not None:
            on_step(done_before + index + 1, total)
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("stopped")
        return tensors

    return callback


class Blend:
    """The full image being put together from ``plan``'s tiles: each tile added with its weights (``add``), the
    weighted mean read at the end (``image``). Where tiles overlap, the one before fades out as the next fades in,
    so two tiles that differ meet in a gradient across their overlap, never at an edge."""

    def __init__(self, plan: TilePlan, width: int, height: int):
        import numpy as np

        self.plan = plan
        self.sums = np.zeros((height, width, 3))
        self.weights = np.zeros((height, width, 1))

    def add(self, index: int, tile) -> None:
        """Tile ``index`` (a PIL image of the plan's tile size)."""
        import numpy as np

        left, top, right, bottom = self.plan.boxes[index]
        weight = self.plan.weights(index)
        self.sums[top:bottom, left:right] += np.asarray(tile.convert("RGB"), dtype=np.float64) * weight
        self.weights[top:bottom, left:right] += weight

    def image(self):
        import numpy as np
        from PIL import Image

        return Image.fromarray(np.clip(np.rint(self.sums / self.weights), 0, 255).astype(np.uint8))


def tiled_image(pipe, request: GenerationRequest, prompt, plan: TilePlan, number: int, hooks, clock, device):
    """Image ``number`` of ``request`` run tile by tile on ``device`` (``prompt``: the prompt stage's embeddings;
    ``hooks``: the run's ``RunHooks``; ``clock``: its ``StageClock``, lapped per tile) and blended; a PIL image."""
    import torch

    dtype, scale = pipe.transformer.dtype, pipe.vae_scale_factor
    full = fitted(request.init_image.image, request.width, request.height)
    noise = initial_latents(pipe, request.seed + number, request.width, request.height, device)
    steps, total = request.steps_run, plan.count * request.steps_run * request.num_images
    blend = Blend(plan, request.width, request.height)
    for index, (left, top, right, bottom) in enumerate(plan.boxes):
        start = encode(pipe, full.crop((left, top, right, bottom)), device, dtype)
        crop = noise[:, :, top // scale : bottom // scale, left // scale : right // scale]
        callback = tile_step_callback(hooks.on_step, hooks.cancel, (number * plan.count + index) * steps, total)
        latents = denoise_from(pipe, request, prompt.positive, prompt.negative, start, crop, callback)
        clock.lap("denoising")
        with torch.no_grad():
            blend.add(index, decode(pipe, latents)[0])
        clock.lap("vae_decode")
        check_cancel(hooks.cancel, "after decoding a tile")
    return blend.image()
