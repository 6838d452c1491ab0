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


def step_callback(
    request: GenerationRequest,
    number: int,
    on_step: Callable[[int, int], None] | None,
    cancel: threading.Event | None,
):
    """The pipeline's step-end callback for image ``number`` of ``request``: reports steps done over the whole
    request (the steps run: fewer than ``num_inference_steps`` for image-to-image) and raises
    ``GenerationCancelled`` once ``cancel`` is set."""
    steps = request.steps_run
    total = steps * request.num_images

    def callback(_pipe, index, _timestep, tensors):
        if on_step is not None:
            on_step(number * steps + index + 1, total)
        if cancel is not None and cancel.is_set():
            raise GenerationCancelled("stopped")
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
