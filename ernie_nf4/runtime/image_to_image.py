"""Image-to-image, the flow-matching way: the init image encoded by the package's VAE into the transformer's latent
space, noised to the strength's step, and denoised over the remaining steps.

With ``n`` steps and strength ``s`` the run skips the first ``k = n - round(n * s)`` steps of the text-to-image
schedule and starts at ``x_k = (1 - sigma_k) * x0 + sigma_k * noise`` (``noise`` the image's seeded
``initial_latents``), then runs the same transformer calls, guidance and scheduler steps as ``ErnieImagePipeline``.
Strength 0 runs no step: the image comes back through the VAE.
"""

from __future__ import annotations

from ..compat import pad_text, patchify_latents
from ..request import GenerationRequest

BN_EPS = 1e-5  # the epsilon the pipeline's decode uses with the VAE's batch-norm statistics


def fitted(image, width: int, height: int):
    """``image`` (PIL) scaled to cover ``width`` x ``height`` (aspect kept) and center-cropped to it. Only the part
    kept is resampled, straight to the run's size: a thin image never becomes a huge one on the way."""
    from PIL import Image

    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    crop_w, crop_h = width / scale, height / scale
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    return image.resize((width, height), Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))


def encode(pipe, image, device, dtype):
    """A PIL image at the run's size -> packed, normalized latents ``[1, 128, H/16, W/16]``: the inverse of
    ``vae_decode.decode`` (VAE encode at the distribution's mode, patchify, batch-norm statistics)."""
    import torch

    vae = pipe.vae
    vae_device = next(vae.parameters()).device
    pixels = pipe.image_processor.preprocess(image, height=image.height, width=image.width)
    with torch.no_grad():
        latents = vae.encode(pixels.to(vae_device, vae.dtype)).latent_dist.mode()
    latents = patchify_latents(pipe, latents.float())
    bn_mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
    bn_std = (vae.bn.running_var.view(1, -1, 1, 1) + BN_EPS).sqrt().to(latents.device, latents.dtype)
    return ((latents - bn_mean) / bn_std).to(device, dtype)


def _text_inputs(pipe, request: GenerationRequest, positive, negative, device, dtype):
    """The padded text batch the pipeline builds: negative then positive under guidance, positive alone without."""
    hiddens = list(negative) + list(positive) if request.guidance_scale > 1.0 else list(positive)
    return pad_text(pipe, hiddens, device, dtype)


def denoise_from(pipe, request: GenerationRequest, positive, negative, image_latents, noise, callback=None):
    """Final packed latents of one image started from ``image_latents`` (``encode``) noised with ``noise`` to the
    strength's step; ``callback(pipe, index, timestep, tensors)`` after each step run (``index`` counts the steps
    run, from 0), as the pipeline's step-end callback."""
    import torch

    steps, device, dtype = request.num_inference_steps, noise.device, noise.dtype
    scheduler = pipe.scheduler
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.0, steps + 1)[:-1], device=device)
    start = steps - request.steps_run
    sigma = scheduler.sigmas[start].to(device, torch.float32)
    latents = ((1 - sigma) * image_latents.float() + sigma * noise.float()).to(dtype)
    scheduler.set_begin_index(start)
    text_bth, text_lens = _text_inputs(pipe, request, positive, negative, device, dtype)
    guided = request.guidance_scale > 1.0
    with torch.no_grad():
        for index, t in enumerate(scheduler.timesteps[start:]):
            model_input = torch.cat([latents, latents]) if guided else latents
            t_batch = torch.full((model_input.shape[0],), t.item(), device=device, dtype=dtype)
            pred = pipe.transformer(
                hidden_states=model_input, timestep=t_batch, text_bth=text_bth, text_lens=text_lens, return_dict=False
            )[0]
            if guided:
                uncond, cond = pred.chunk(2, dim=0)
                pred = uncond + request.guidance_scale * (cond - uncond)
            latents = scheduler.step(pred, t, latents).prev_sample
            if callback is not None:
                latents = callback(pipe, index, t, {"latents": latents}).pop("latents", latents)
    return latents
