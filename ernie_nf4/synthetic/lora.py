"""A random LoRA for an ERNIE-Image transformer, written as AI-Toolkit writes one (``diffusion_model.<module>.lora_A
.weight`` / ``.lora_B.weight``, bf16): for speed and memory figures with a LoRA on every attention and MLP linear
layer of the full-size model (``python -m ernie_nf4.synthetic.lora --original DIR --rank 64 --output FILE``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# The repeated block's attention and MLP linear layers: (module, input width, output width) as config keys.
BLOCK_LINEARS = (
    ("self_attention.to_q", "hidden_size", "hidden_size"),
    ("self_attention.to_k", "hidden_size", "hidden_size"),
    ("self_attention.to_v", "hidden_size", "hidden_size"),
    ("self_attention.to_out.0", "hidden_size", "hidden_size"),
    ("mlp.gate_proj", "hidden_size", "ffn_hidden_size"),
    ("mlp.up_proj", "hidden_size", "ffn_hidden_size"),
    ("mlp.linear_fc2", "ffn_hidden_size", "hidden_size"),
)


def write_random_lora(original: str | Path, output: str | Path, rank: int = 64, seed: int = 0) -> Path:
    """A rank-``rank`` LoRA on every attention and MLP linear of ``original``'s transformer (its
    ``transformer/config.json``), small random values, written to ``output``."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((Path(original) / "transformer" / "config.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_layers"]):
        for module, fan_in, fan_out in BLOCK_LINEARS:
            key = f"diffusion_model.layers.{layer}.{module}"
            down = torch.randn(rank, config[fan_in], generator=generator) / config[fan_in] ** 0.5
            tensors[f"{key}.lora_A.weight"] = down.to(torch.bfloat16)
            tensors[f"{key}.lora_B.weight"] = (torch.randn(config[fan_out], rank, generator=generator) * 0.01).to(
                torch.bfloat16
            )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(output))
    return output


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ernie_nf4.synthetic.lora", description=__doc__)
    p.add_argument("--original", required=True, help="an ERNIE-Image folder (its transformer/config.json is read)")
    p.add_argument("--output", required=True, help="the .safetensors file to write")
    p.add_argument("--rank", type=int, default=64, help="the LoRA's rank (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random values")
    args = p.parse_args(argv)
    path = write_random_lora(args.original, args.output, args.rank, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB, rank {args.rank})")


if __name__ == "__main__":
    main()
