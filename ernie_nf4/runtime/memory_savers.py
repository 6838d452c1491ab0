"""Two small GPU-memory savers the loader applies with its fast path (both leave the model's results as they are
or, for tiling, nearly so):

- the text encoder's token-embedding table (131072 x 3072 bf16, 0.75 GiB) stays in CPU memory: encoding a
  prompt looks up a few hundred rows there and sends them to the GPU;
- the VAE decodes images larger than 768 px on a side in overlapping 768-px tiles blended together (diffusers'
  tiled decode), which caps its activations at about 1.4 GiB instead of 2.4 GiB at 1024x1024. Tiles see only
  their own part of the latents (the VAE's middle attention is global), so a tiled image differs slightly
  from an untiled one; it is as reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VAE_TILE = 768  # pixels


class CpuEmbedding(torch.nn.Module):
    """An ``nn.Embedding`` whose table lives in CPU memory; ids and results stay on the caller's device.

    The table is a plain attribute, not a parameter, so moving the model (``.to``, ``Residency``) leaves it."""

    def __init__(self, embedding: torch.nn.Embedding):
        super().__init__()
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.table = embedding.weight.detach().to("cpu")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids.to("cpu"), self.table, self.padding_idx).to(input_ids.device)


def embeddings_on_cpu(model) -> int:
    """Move ``model``'s input-embedding table to CPU memory (transformers' get/set_input_embeddings).
    Returns the bytes that leave the GPU; 0 when the embedding is tied to an output layer (the PE)."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding):
        return 0
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and output.weight is embedding.weight:
        return 0
    model.set_input_embeddings(CpuEmbedding(embedding))
    return embedding.weight.numel() * embedding.weight.element_size()


def tile_vae(vae, tile: int = VAE_TILE) -> None:
    """Decode images larger than ``tile`` pixels in overlapping ``tile``-pixel tiles."""
    vae.enable_tiling()
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // 2 ** (len(vae.config.block_out_channels) - 1)
