"""Random-weight ERNIE-Image originals, written like the real one (a diffusers folder, bf16 safetensors).

``tiny`` builds in seconds on a CPU for tests and UI work; ``full`` has the real architecture and sizes
(8.03 B transformer, 3.85 B text encoder, 3.83 B PE) for speed, memory and package-size figures on a GPU.
Images from random weights are noise; timings and bytes are real.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from ..torch_state import torch_state_kept
from .configs import SIZES, component_config, model_index
from .tokenizers import PE_CHAT_TEMPLATE, build_tokenizer

logger = logging.getLogger(__name__)

_TOKENIZER_VOCAB = 512
_TOKENIZER_MAX_LENGTH = 2048


def _randomize(module, seed: int) -> None:
    """Deterministic random weights: matrices ~ N(0, 1/fan_in), norm scales 1, biases 0."""
    import torch

    device = next(module.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=generator)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)


def _store_tied_head(folder: Path) -> None:
    """Write ``lm_head.weight`` beside the tied embedding, as the original PE file stores it (7.66 GB)."""
    from safetensors.torch import load_file, save_file

    (weights,) = folder.glob("*.safetensors")
    tensors = load_file(weights)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, weights, metadata={"format": "pt"})


def stored_bytes(model) -> int:
    """Bytes of the model's state dict in bf16 with tied weights stored twice (as the original files are)."""
    return sum(t.numel() for t in model.state_dict().values()) * 2


def _build_component(name: str, size: str, device: str):
    import torch
    from diffusers import AutoencoderKLFlux2, ErnieImageTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import Ministral3Config, Ministral3ForCausalLM, Mistral3Config, Mistral3Model

    config = component_config(name, size)
    if name == "scheduler":
        return FlowMatchEulerDiscreteScheduler.from_config(config)
    with torch_state_kept(), torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        if name == "transformer":
            return ErnieImageTransformer2DModel.from_config(config)
        if name == "vae":
            return AutoencoderKLFlux2.from_config(config)
        if name == "text_encoder":
            return Mistral3Model(Mistral3Config(**config))
        return Ministral3ForCausalLM(Ministral3Config(**config))


def build_original(
    output_dir: str | Path, size: str = "tiny", seed: int = 0, device: str = "cpu", on_component=None
) -> Path:
    """Write a random-weight ERNIE-Image original (all seven components) to ``output_dir``.

    One component at a time is built (on ``device``), saved and freed, so the full-size model needs
    about 16 GB of (GPU) memory at most; ``on_component(done, count, name)`` is called as each component starts.
    Returns the folder.
    """
    import torch

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    out = Path(output_dir)
    if out.exists():
        raise FileExistsError(f"output_dir {out} exists; remove it or choose another folder")
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)

    models = ("scheduler", "vae", "transformer", "text_encoder", "pe")
    for index, name in enumerate(models):
        logger.info("building %s %s", size, name)
        if on_component is not None:
            on_component(index, len(models), name)
        component = _build_component(name, size, device)
        if name != "scheduler":
            _randomize(component, seed + index)
            component.eval()
        component.save_pretrained(partial / name, max_shard_size="10GB")
        if name == "pe":
            _store_tied_head(partial / name)
        del component
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    max_length = _TOKENIZER_MAX_LENGTH
    build_tokenizer(_TOKENIZER_VOCAB, max_length).save_pretrained(partial / "tokenizer")
    build_tokenizer(_TOKENIZER_VOCAB, max_length, PE_CHAT_TEMPLATE).save_pretrained(partial / "pe_tokenizer")
    (partial / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n")
    partial.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(
        prog="python -m ernie_nf4.synthetic",
        description="Write a random-weight ERNIE-Image original (images are noise).",
    )
    parser.add_argument("--output", required=True, help="folder to create")
    parser.add_argument("--size", choices=SIZES, default="tiny", help="tiny (tests, CPU) or full (real sizes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--device", default="cpu", help="where to build the weights (cuda is much faster for full)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(build_original(args.output, size=args.size, seed=args.seed, device=args.device))
