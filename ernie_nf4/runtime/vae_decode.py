"""The VAE decode stage: packed latents to PIL images, as ``ErnieImagePipeline`` decodes them."""

from __future__ import annotations

from ..compat import unpatchify_latents


def decode(pipe, latents) -> list:
    """Packed latents -> PIL images (run under ``torch.no_grad``)."""
    vae = pipe.vae
    bn_mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
    bn_std = (vae.bn.running_var.view(1, -1, 1, 1) + 1e-5).sqrt().to(latents.device, latents.dtype)
    latents = unpatchify_latents(pipe, latents * bn_std + bn_mean)
    images = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(images, output_type="pil")
