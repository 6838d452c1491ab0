"""The denoising stage: seeded starting noise and the pipeline's denoising loop, stopping at the latents.

The one denoising path of the generator and the benchmark's fidelity check.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import GenerationCancelled
from ..request import GenerationRequest


def initial_latents(pipe, seed: int, width: int, height: int, device):
    """Noise for one image from its seed (drawn on the CPU, so the same on every device)."""
    import torch

    shape = (1, pipe.transformer.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
    return noise.to(device, pipe.transformer.dtype)


def preview_every(steps: int) -> int:
    """A live preview after every this many steps of an image (about 8 an image), never after its last step
    (its decode comes right then)."""
    return max(1, steps // 8)


def previewed_steps(steps: int) -> list[int]:
    """The steps of an image (1-based, of the ``steps`` it runs) after which a live preview comes."""
    every = preview_every(steps)
    return [step for step in range(every, steps, every)]


def step_callback(
    request: GenerationRequest,
    number: int,
    on_step: Callable[[int, int], None] | None,
    cancel: threading.Event | None,
    on_preview: Callable[[object, int, int], None] | None = None,
    preview_map=None,
):
    """The pipeline's step-end callback for image ``number`` of ``request``: reports steps done over the whole
    request (the steps run: fewer than ``num_inference_steps`` for image-to-image) and raises
    ``GenerationCancelled`` once ``cancel`` is set. With ``on_preview`` and ``preview_map`` (a
    ``package.preview_map.PreviewMap``), after the steps ``previewed_steps`` names and unless stopped, it calls
    ``on_preview(image, done, total)`` with the latents through the map as a small PIL image (no VAE call)."""
    steps = request.steps_run
    total = steps * request.num_images
    shown = set(previewed_steps(steps)) if on_preview is not None and preview_map is not None else set()

    def callback(_pipe, index, _timestep, tensors):
        done = number * steps + index + 1
        if on_step is not None:
            on_step(done, total)
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("stopped")
        if index + 1 in shown:
            on_preview(preview_map.image(tensors["latents"]), done, total)
        return tensors

    return callback


def denoise(pipe, request: GenerationRequest, positive, negative, latents, callback=None):
    """Final packed latents of one image from its text embeddings and starting ``latents``, at ``request``'s size,
    steps and guidance (``negative`` is used only when guidance is above 1)."""
    return pipe(
        prompt_embeds=positive,
        negative_prompt_embeds=negative if request.guidance_scale > 1.0 else None,
        height=request.height,
        width=request.width,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        latents=latents,
        output_type="latent",
        use_pe=False,
        callback_on_step_end=callback,
    ).images
