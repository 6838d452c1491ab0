"""ERNIE-Image component configs: the real (full-size) ones and a tiny variant for tests.

The full-size configs are data copied from the public ``baidu/ERNIE-Image`` model
(``configs_data/ernie-image/*.json``). The tiny variant keeps every structural choice (classes, rope type,
latent channels, VAE depth) and shrinks the widths to multiples of 64, as bitsandbytes on the CPU needs.
"""

from __future__ import annotations

import copy
import json
from importlib import resources

COMPONENT_CONFIGS = ("transformer", "text_encoder", "pe", "vae", "scheduler")
SIZES = ("tiny", "full")

# Sizes of the original bf16 files, as the published ERNIE-Image-NF4 model card lists them.
REFERENCE_ORIGINAL_BYTES = {
    "transformer": 16_067_025_160,
    "text_encoder": 7_698_241_104,
    "pe": 7_663_346_520,
}

_TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "vocab_size": 512,
}

_TINY_OVERRIDES = {
    "transformer": {
        "hidden_size": 64,
        "num_attention_heads": 2,
        "num_layers": 2,
        "ffn_hidden_size": 128,
        "rope_axes_dim": [8, 12, 12],
        "text_in_dim": 64,
    },
    "pe": {**_TINY_TEXT, "pad_token_id": 5},
    "vae": {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "sample_size": 64},
    "scheduler": {},
}
_TINY_VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "head_dim": 32,
    "image_size": 56,
}


def _reference(name: str) -> dict:
    text = (
        resources.files("ernie_nf4.synthetic")
        .joinpath("configs_data")
        .joinpath("ernie-image")
        .joinpath(f"{name}.json")
        .read_text()
    )
    return json.loads(text)


def model_index() -> dict:
    """The original pipeline's ``model_index.json``."""
    return _reference("model_index")


def component_config(name: str, size: str = "full") -> dict:
    """Config dict of one component (``transformer``, ``text_encoder``, ``pe``, ``vae``, ``scheduler``)."""
    if name not in COMPONENT_CONFIGS:
        raise ValueError(f"name must be one of {COMPONENT_CONFIGS}, got {name!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    config = copy.deepcopy(_reference(name))
    if size == "full":
        return config
    if name == "text_encoder":
        config["text_config"].update(_TINY_TEXT)
        config["vision_config"].update(_TINY_VISION)
    else:
        config.update(_TINY_OVERRIDES[name])
    return config
