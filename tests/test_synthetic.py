import pytest
import torch
from diffusers import ErnieImagePipeline

from ernie_nf4.package.metadata import sha256_file
from ernie_nf4.synthetic.configs import REFERENCE_ORIGINAL_BYTES, component_config
from ernie_nf4.synthetic.original import _build_component, build_original, stored_bytes

COMPONENTS = ["pe", "pe_tokenizer", "scheduler", "text_encoder", "tokenizer", "transformer", "vae"]


def test_tiny_original_has_all_seven_components_and_loads(tiny_original):
    assert sorted(p.name for p in tiny_original.iterdir() if p.is_dir()) == COMPONENTS
    pipe = ErnieImagePipeline.from_pretrained(tiny_original, dtype=torch.bfloat16)
    assert pipe.pe_tokenizer.chat_template and "[INST]" in pipe.pe_tokenizer.chat_template
    ids = pipe.tokenizer("一只小猫 🐱")["input_ids"]
    assert ids[0] == pipe.tokenizer.bos_token_id
    assert pipe.tokenizer.decode(ids, skip_special_tokens=True) == "一只小猫 🐱"
    assert len(list(tiny_original.rglob("*.safetensors"))) == 4
    assert torch.equal(pipe.pe.lm_head.weight, pipe.pe.model.embed_tokens.weight)


def test_tiny_original_is_deterministic_per_seed(tiny_original, tmp_path):
    same = build_original(tmp_path / "same", seed=0)
    other = build_original(tmp_path / "other", seed=1)
    name = "transformer/diffusion_pytorch_model.safetensors"
    assert sha256_file(same / name) == sha256_file(tiny_original / name)
    assert sha256_file(other / name) != sha256_file(tiny_original / name)


def test_build_original_refuses_existing_folder(tiny_original):
    with pytest.raises(FileExistsError, match="output_dir"):
        build_original(tiny_original)


@pytest.mark.parametrize("name", sorted(REFERENCE_ORIGINAL_BYTES))
def test_full_size_configs_reproduce_the_original_file_sizes(name):
    model = _build_component(name, "full", "meta")
    bf16_bytes = stored_bytes(model)
    assert abs(bf16_bytes - REFERENCE_ORIGINAL_BYTES[name]) / REFERENCE_ORIGINAL_BYTES[name] < 1e-3


def test_unknown_component_or_size_is_refused():
    with pytest.raises(ValueError, match="name must be one of"):
        component_config("unet")
    with pytest.raises(ValueError, match="size must be one of"):
        component_config("vae", "huge")
