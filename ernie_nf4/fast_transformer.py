"""A faster way to run diffusers' ``ErnieImageTransformer2DModel``: same weights, same image-token outputs.

``enable_fast_path(transformer)`` swaps the model's and its blocks' classes for the subclasses below
(weights, config and quantization untouched; ``disable_fast_path`` swaps them back). What changes against
the stock forward of diffusers 0.42.1:

- **No padding mask.** The stock model pads every sample's text to the longest one and passes a
  ``[B, 1, 1, S]`` mask, which keeps SDPA off its flash/cuDNN kernels and spends compute on padding. Here
  each sample's own tokens (its image tokens, then its text tokens: exactly what the mask lets through) are
  packed into one sequence; the linear layers run on the packed tokens and attention runs per sample.
- **Batch-first, no copies.** The stock blocks permute ``[S, B, H]`` to ``[B, S, H]`` and back in every
  block, and expand the six AdaLN modulations to full ``[S, B, H]`` tensors; here they broadcast.
- **Rotary tables once.** cos/sin are computed once per forward, not twice per block.
- **Optional regional ``torch.compile``** of the repeated block (``compile_blocks``), which fuses the
  float32 modulation arithmetic into single kernels. Compiled with dynamic shapes, so one compile serves
  every image size and prompt length. Inductor's on-disk cache (``TORCHINDUCTOR_CACHE_DIR``) makes later compiles quick.

The packed path needs one timestep for the whole batch (true for ``ErnieImagePipeline``, which runs the
conditional and unconditional halves at the same step); any other call runs the stock forward.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_ernie_image import (
    ErnieImageSharedAdaLNBlock,
    ErnieImageTransformer2DModel,
    ErnieImageTransformer2DModelOutput,
)

COMPILE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ernie-nf4" / "torch-compile"


def _modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` in float32, back in ``x``'s dtype (as the stock block computes it)."""
    return (x.float() * (1 + scale.float()) + shift.float()).to(x.dtype)


def _gated(residual: torch.Tensor, gate: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return residual + (gate.float() * out.float()).to(residual.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The stock rotary embedding (non-interleaved rotate-half over the whole head) with precomputed tables."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class FastErnieImageBlock(ErnieImageSharedAdaLNBlock):
    """The stock block on packed tokens: ``x`` is ``[1, T, H]`` holding each sample's tokens back to back,
    ``segments`` their lengths; attention never crosses a segment."""

    def forward(self, x, rotary, temb, segments):
        if not isinstance(segments, tuple):  # called by the stock model forward (the fallback): stock block
            return super().forward(x, rotary, temb, segments)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = temb
        attn = self.self_attention
        h = _modulate(self.adaLN_sa_ln(x), scale_msa, shift_msa)
        cos, sin = rotary
        query = _rotate(attn.norm_q(attn.to_q(h).unflatten(-1, (attn.heads, -1))), cos, sin).transpose(1, 2)
        key = _rotate(attn.norm_k(attn.to_k(h).unflatten(-1, (attn.heads, -1))), cos, sin).transpose(1, 2)
        value = attn.to_v(h).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        if len(segments) == 1:
            out = F.scaled_dot_product_attention(query, key, value)
        else:
            parts, start = [], 0
            for length in segments:
                end = start + length
                parts.append(
                    F.scaled_dot_product_attention(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end])
                )
                start = end
            out = torch.cat(parts, dim=2)
        out = attn.to_out[0](out.transpose(1, 2).flatten(2, 3))
        x = _gated(x, gate_msa, out)
        h = _modulate(self.adaLN_mlp_ln(x), scale_mlp, shift_mlp)
        return _gated(x, gate_mlp, self.mlp(h))


class FastErnieImageTransformer2DModel(ErnieImageTransformer2DModel):
    _repeated_blocks = ["FastErnieImageBlock"]

    def forward(self, hidden_states, timestep, text_bth, text_lens, return_dict: bool = True):
        B, _, H, W = hidden_states.shape
        p = self.patch_size
        if p != 1 or B == 0 or text_bth.shape[1] == 0 or not bool((timestep == timestep[0]).all()):
            return super().forward(hidden_states, timestep, text_bth, text_lens, return_dict=return_dict)
        device, dtype = hidden_states.device, hidden_states.dtype
        n_img = H * W
        img = self.x_embedder(hidden_states)  # [B, N, hidden]
        text = self.text_proj(text_bth) if self.text_proj is not None else text_bth  # [B, Tmax, hidden]
        lengths = [int(n) for n in text_lens.tolist()]

        x = torch.cat([t for b, n in enumerate(lengths) for t in (img[b], text[b, :n])])[None]  # [1, T, hidden]
        rotary = self._rotary(H, W, tuple(lengths), device, dtype)
        segments = tuple(n_img + length for length in lengths)

        # Computed for the whole batch as the stock model does (a one-row NF4 matmul takes another kernel and
        # rounds differently), then one row serves every packed token: the batch shares its timestep.
        c = self.time_embedding(self.time_proj(timestep).to(dtype=dtype))  # [B, hidden]
        temb = [t[:1, None] for t in self.adaLN_modulation(c).chunk(6, dim=-1)]  # 6 x [1, 1, hidden]
        for layer in self.layers:
            x = layer(x, rotary, temb, segments)

        starts = [sum(segments[:b]) for b in range(B)]
        x = torch.stack([x[0, s : s + n_img] for s in starts])  # image tokens: [B, N, hidden]
        scale, shift = self.final_norm.linear(c).chunk(2, dim=-1)
        x = (self.final_norm.norm(x) * (1 + scale[:, None]) + shift[:, None]).type_as(x)
        out = self.final_linear(x).view(B, H, W, self.out_channels).permute(0, 3, 1, 2).contiguous()
        if getattr(self, "_compile_after_this_call", False):
            # After one eager call: bitsandbytes may repack weights on their first use (it does on the CPU),
            # which must not happen inside a compiled graph.
            self._compile_after_this_call = False
            self.compile_repeated_blocks(dynamic=True)  # one graph for every size and prompt length
        return ErnieImageTransformer2DModelOutput(sample=out) if return_dict else (out,)

    def _rotary(self, H: int, W: int, lengths: tuple[int, ...], device, dtype):
        """cos/sin tables of the packed tokens' positions, built as the stock forward builds its position ids.
        The same for every step of an image, so the last one is kept."""
        key = (H, W, lengths, device, dtype)
        cached = self.__dict__.get("_rotary_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        grid = torch.stack(
            torch.meshgrid(
                torch.arange(H, device=device, dtype=torch.float32),
                torch.arange(W, device=device, dtype=torch.float32),
                indexing="ij",
            ),
            dim=-1,
        ).reshape(-1, 2)
        ids = []
        for length in lengths:
            text_ids = torch.zeros((length, 3), device=device)
            text_ids[:, 0] = torch.arange(length, device=device, dtype=torch.float32)
            ids += [torch.cat([torch.full((H * W, 1), float(length), device=device), grid], dim=-1), text_ids]
        freqs = self.pos_embed(torch.cat(ids)[None])  # [1, T, 1, head_dim], float32
        rotary = (torch.cos(freqs).to(dtype), torch.sin(freqs).to(dtype))
        self.__dict__["_rotary_cache"] = (key, rotary)
        return rotary


def enable_fast_path(transformer) -> None:
    """Run ``transformer`` (an ``ErnieImageTransformer2DModel``, bf16 or NF4) with the fast forward."""
    if not isinstance(transformer, ErnieImageTransformer2DModel):
        raise TypeError(f"transformer must be an ErnieImageTransformer2DModel, got {type(transformer).__name__}")
    transformer.__class__ = FastErnieImageTransformer2DModel
    for layer in transformer.layers:
        layer.__class__ = FastErnieImageBlock


def disable_fast_path(transformer) -> None:
    """Back to the stock forward (compiled blocks are reset too)."""
    if isinstance(transformer, FastErnieImageTransformer2DModel):
        transformer.__class__ = ErnieImageTransformer2DModel
        transformer._compile_after_this_call = False
        for layer in transformer.layers:
            layer.__class__ = ErnieImageSharedAdaLNBlock
            layer._compiled_call_impl = None


def compile_blocks(transformer, cache_dir: str | Path | None = COMPILE_CACHE) -> None:
    """Regional ``torch.compile`` of the fast path's repeated block. The next call runs eagerly and sets it up;
    the one after compiles (``Generator.warm_up`` does both).

    ``cache_dir`` keeps Inductor's compiled kernels between runs (unless ``TORCHINDUCTOR_CACHE_DIR`` is set).
    """
    if not isinstance(transformer, FastErnieImageTransformer2DModel):
        enable_fast_path(transformer)
    if cache_dir is not None and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
    transformer._compile_after_this_call = True
