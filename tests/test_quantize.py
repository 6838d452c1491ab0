import filecmp
import json

import bitsandbytes as bnb
import pytest
import torch
from diffusers import ErnieImagePipeline
from safetensors import safe_open

from ernie_nf4.build.quantize import QUANTIZABLE, bnb_config, check_components
from ernie_nf4.package.metadata import (
    METADATA_FILE,
    PackageError,
    read_metadata,
    sha256_file,
    verify_package,
    write_metadata,
)
from ernie_nf4.package.safetensors_header import header_sha256

from .support.fixtures import DEVICE

pytestmark = pytest.mark.nf4
KEPT = ["pe_tokenizer", "scheduler", "tokenizer", "vae"]


def test_metadata_figures_equal_the_bytes_on_disk(tiny_package, tiny_original):
    meta = read_metadata(tiny_package)
    assert meta["components_quantized"] == sorted(QUANTIZABLE, key=list(meta["components"]).index)
    assert sorted(meta["components_kept"]) == KEPT
    assert meta["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert meta["quantization"]["bnb_4bit_use_double_quant"] is True
    assert meta["benchmarks"] == {}
    total_after = (tiny_package / "model_index.json").stat().st_size
    total_before = (tiny_original / "model_index.json").stat().st_size
    for name, record in meta["components"].items():
        on_disk = {
            p.relative_to(tiny_package / name).as_posix(): p for p in (tiny_package / name).rglob("*") if p.is_file()
        }
        assert set(on_disk) == set(record["files"])
        for rel, path in on_disk.items():
            expected = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
            if path.suffix == ".safetensors":
                expected["header_sha256"] = header_sha256(path)
            assert record["files"][rel] == expected
        assert record["bytes_after"] == sum(p.stat().st_size for p in on_disk.values())
        assert record["bytes_before"] == sum(p.stat().st_size for p in (tiny_original / name).rglob("*") if p.is_file())
        total_after += record["bytes_after"]
        total_before += record["bytes_before"]
    assert meta["totals"]["bytes_after"] == total_after
    assert meta["totals"]["bytes_before"] == total_before
    assert meta["totals"]["ratio"] == pytest.approx(total_after / total_before, abs=1e-6)
    for name in QUANTIZABLE:
        assert meta["components"][name]["bytes_after"] < 0.75 * meta["components"][name]["bytes_before"]


def test_kept_components_are_byte_identical_copies(tiny_package, tiny_original):
    for name in KEPT:
        comparison = filecmp.dircmp(tiny_original / name, tiny_package / name)
        assert not comparison.left_only and not comparison.right_only
        for rel in comparison.common_files:
            assert filecmp.cmp(tiny_original / name / rel, tiny_package / name / rel, shallow=False)


def test_package_loads_without_quantization_config_and_layers_are_nf4(tiny_package, tiny_original, nf4_everywhere):
    pipe = ErnieImagePipeline.from_pretrained(tiny_package, dtype=torch.bfloat16, device_map=DEVICE)
    original = ErnieImagePipeline.from_pretrained(tiny_original, dtype=torch.bfloat16)
    for name in QUANTIZABLE:
        model, reference = getattr(pipe, name), getattr(original, name)
        linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert linears, name
        for layer in linears:
            assert isinstance(layer.weight, bnb.nn.Params4bit)
            assert layer.weight.dtype == torch.uint8
            assert layer.weight.quant_state.quant_type == "nf4"
            assert layer.weight.quant_state.nested  # double quantization
        if name == "text_encoder":  # saved as its language model alone
            reference = reference.language_model
        assert model.num_parameters() == reference.num_parameters()


def test_save_and_reload_give_equal_parameters_and_quant_states(tiny_original, tmp_path, nf4_everywhere):
    from diffusers import ErnieImageTransformer2DModel
    from transformers import Ministral3ForCausalLM

    for name, entry, model_class in (
        ("transformer", ["diffusers", "ErnieImageTransformer2DModel"], ErnieImageTransformer2DModel),
        ("pe", ["transformers", "Ministral3ForCausalLM"], Ministral3ForCausalLM),
    ):
        first = model_class.from_pretrained(
            tiny_original / name,
            quantization_config=bnb_config(entry[0]),
            dtype=torch.bfloat16,
            device_map={"": DEVICE},
        )
        first.save_pretrained(tmp_path / name)
        second = model_class.from_pretrained(tmp_path / name, dtype=torch.bfloat16, device_map={"": DEVICE})
        params = dict(second.named_parameters())
        for key, param in first.named_parameters():
            assert torch.equal(param, params[key]), key
            if isinstance(param, bnb.nn.Params4bit):
                state_a = param.quant_state.as_dict(packed=True)
                state_b = params[key].quant_state.as_dict(packed=True)
                assert state_a.keys() == state_b.keys()
                for field, value in state_a.items():
                    same = torch.equal(value, state_b[field]) if torch.is_tensor(value) else value == state_b[field]
                    assert same, (key, field)


def test_metadata_errors_name_the_path_and_field(tiny_package, tmp_path):
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(tiny_package, copy)
    meta = json.loads((copy / METADATA_FILE).read_text())
    del meta["totals"]["bytes_after"]
    write_metadata(copy, meta)
    with pytest.raises(PackageError, match=r"quantization_metadata.json: field 'totals.bytes_after' is missing"):
        read_metadata(copy)
    meta["totals"]["bytes_after"] = "many"
    write_metadata(copy, meta)
    with pytest.raises(PackageError, match="'totals.bytes_after' must be int"):
        read_metadata(copy)
    (copy / METADATA_FILE).write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        read_metadata(copy)
    (copy / METADATA_FILE).unlink()
    with pytest.raises(PackageError, match="No quantization metadata found at"):
        read_metadata(copy)


def test_verify_package_catches_truncated_and_missing_files(tiny_package, tmp_path):
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(tiny_package, copy)
    verify_package(copy, check_sha256=True)
    weights = copy / "pe" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-10] + bytes(10))
    verify_package(copy)  # same size: only the hash tells
    with pytest.raises(PackageError, match="sha256 differs"):
        verify_package(copy, check_sha256=True)
    weights.write_bytes(data[:100])
    with pytest.raises(PackageError, match=r"model.safetensors: 100 bytes on disk.*--overwrite"):
        verify_package(copy)
    weights.write_bytes(data)
    shutil.rmtree(copy / "vae")
    with pytest.raises(PackageError, match="component folder 'vae' is missing"):
        verify_package(copy)


def test_unknown_components_are_refused():
    with pytest.raises(ValueError, match=r"components: unknown \['vae'\]"):
        check_components(["transformer", "vae"])


def test_the_published_model_cards_per_component_snippet_loads_the_package(tiny_package, nf4_everywhere):
    from diffusers import AutoModel
    from transformers import AutoModel as TransformersAutoModel
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.bfloat16, "device_map": {"": DEVICE}, "local_files_only": True}
    transformer = AutoModel.from_pretrained(str(tiny_package / "transformer"), **kwargs)
    text_encoder = TransformersAutoModel.from_pretrained(str(tiny_package / "text_encoder"), **kwargs)
    pe = AutoModelForCausalLM.from_pretrained(str(tiny_package / "pe"), **kwargs)
    pipe = ErnieImagePipeline.from_pretrained(
        str(tiny_package), transformer=transformer, text_encoder=text_encoder, pe=pe, dtype=torch.bfloat16
    )
    for model in (pipe.transformer, pipe.text_encoder, pipe.pe):
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_not_enough_disk_is_refused_before_any_work(tmp_path):
    from ernie_nf4.build.quantize import _check_disk
    from ernie_nf4.errors import EnvironmentUnsupported

    _check_disk(tmp_path, 1)
    with pytest.raises(EnvironmentUnsupported, match=r"B free, the package needs about 1000000.00 TB; free some disk"):
        _check_disk(tmp_path, 10**18)


def test_text_encoder_ships_without_its_vision_tower_and_gives_the_same_embeddings(
    tiny_package, tiny_original, tmp_path, nf4_everywhere
):
    from transformers import Mistral3Model, MistralModel

    from ernie_nf4.build.quantize import quantize_package

    meta = read_metadata(tiny_package)
    record = meta["components"]["text_encoder"]
    assert record["class"] == ["transformers", "MistralModel"]
    assert record["left_out"]["modules"] == ["vision_tower", "multi_modal_projector"]
    full = Mistral3Model.from_pretrained(tiny_original / "text_encoder", dtype=torch.bfloat16)
    vision = sum(p.numel() for m in (full.vision_tower, full.multi_modal_projector) for p in m.parameters())
    assert record["left_out"]["parameters"] == vision
    assert json.loads((tiny_package / "model_index.json").read_text())["text_encoder"] == record["class"]
    with safe_open(tiny_package / "text_encoder" / "model.safetensors", "pt") as stored:
        names = list(stored.keys())
    assert names and not any("vision" in k or "projector" in k for k in names)

    # The same quantization with the vision tower kept: a bigger package whose text encoder (the whole
    # Mistral3Model) gives exactly the embeddings the slim one gives.
    whole = quantize_package(
        str(tiny_original), tmp_path / "whole", components=["text_encoder"], device=DEVICE, keep_vision=True
    )
    whole_meta = read_metadata(whole)
    assert whole_meta["components"]["text_encoder"]["class"] == ["transformers", "Mistral3Model"]
    assert "left_out" not in whole_meta["components"]["text_encoder"]
    assert whole_meta["components"]["text_encoder"]["bytes_after"] > record["bytes_after"]
    kwargs = {"dtype": torch.bfloat16, "device_map": {"": DEVICE}}
    slim = MistralModel.from_pretrained(tiny_package / "text_encoder", **kwargs)
    big = Mistral3Model.from_pretrained(whole / "text_encoder", **kwargs)
    ids = torch.tensor([[1, 5, 77, 300, 12, 9]], device=DEVICE)
    with torch.no_grad():
        a = slim(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        b = big(input_ids=ids, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(a, b)


def test_overwrite_never_replaces_another_pipeline_or_a_lookalike(tmp_path):
    import json as _json

    from ernie_nf4.build.quantize import check_output

    other = tmp_path / "FLUX.1-dev"
    other.mkdir()
    (other / "model_index.json").write_text(_json.dumps({"_class_name": "FluxPipeline"}))
    (other / "quantization_metadata.json").write_text(_json.dumps({"model": "someone else's"}))
    with pytest.raises(ValueError, match="is not an ERNIE-Image package"):
        check_output(other, "baidu/ERNIE-Image", overwrite=True)
    assert (other / "model_index.json").exists()
    ernie = tmp_path / "old-package"
    ernie.mkdir()
    (ernie / "model_index.json").write_text(_json.dumps({"_class_name": "ErnieImagePipeline"}))
    check_output(ernie, "baidu/ERNIE-Image", overwrite=True)  # an ERNIE-Image pipeline folder may be replaced


TINY_TEXT = {  # widths multiples of 64, as bitsandbytes on the CPU needs
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "vocab_size": 512,
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 1000000.0,
        "factor": 16.0,
        "original_max_position_embeddings": 16384,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "llama_4_scaling_beta": 0.1,
    },
}


def write_ministral3_text_encoder(folder):
    """A Mistral3 text encoder whose text_config is ``ministral3``, as Mistral's own Ministral 3 releases are saved,
    written with plain transformers calls."""
    from transformers import Mistral3Config, Mistral3Model

    config = Mistral3Config(
        text_config={"model_type": "ministral3", **TINY_TEXT},
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "head_dim": 32,
            "patch_size": 14,
            "image_size": 56,
        },
    )
    torch.manual_seed(0)
    model = Mistral3Model(config).to(torch.bfloat16)
    model.save_pretrained(folder)


def test_a_ministral3_text_encoder_is_built_and_the_package_loads(tiny_original, tmp_path):
    import shutil

    from ernie_nf4.build.quantize import quantize_package
    from ernie_nf4.runtime.loader import load_pipeline

    source = tmp_path / "ministral3-original"
    shutil.copytree(tiny_original, source, ignore=shutil.ignore_patterns("text_encoder"))
    write_ministral3_text_encoder(source / "text_encoder")
    package = quantize_package(str(source), tmp_path / "pkg", components=("text_encoder", "pe"), device="cpu")
    index = json.loads((package / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "Ministral3Model"]  # its language model alone

    loaded = load_pipeline(package, device="cpu", fast=False)
    encoder = loaded.pipe.text_encoder
    assert type(encoder).__name__ == "Ministral3Model"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in encoder.modules())
    out = loaded.pipe("a cat", width=64, height=64, num_inference_steps=1, use_pe=False, output_type="latent")
    assert torch.isfinite(out.images).all()


def test_an_empty_output_is_refused_naming_it(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from ernie_nf4.build.quantize import quantize_package
    from ernie_nf4.errors import InvalidArgument

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(root / "quantize.py"), "--output", "", "--source", str(tmp_path / "nowhere")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--output is empty" in result.stderr, result.stderr
    assert not (tmp_path / "ERNIE-Image-NF4").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(InvalidArgument, match="output: empty"):
        quantize_package(str(tmp_path / "nowhere"), "  ", device="cpu")
