"""What opening a package checks before anything is built from it, and what its label says was checked: small files
always against their recorded sha256, weights sampled for NaN, configs within sane bounds, JSON depth bounded.
The damage is done here with plain file edits, independently of the code that checks."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from ernie_nf4.errors import PackageError
from ernie_nf4.package.check import check_package
from ernie_nf4.package.metadata import METADATA_FILE
from ernie_nf4.package.sizes import package_stats
from ernie_nf4.runtime.loader import load_pipeline

NAN_BITS = {"BF16": b"\xc0\x7f", "F16": b"\x00\x7e", "F32": b"\x00\x00\xc0\x7f"}


@pytest.fixture
def package(tiny_package, tmp_path):
    return shutil.copytree(tiny_package, tmp_path / "pkg")


@pytest.fixture
def foreign(package):
    """The same package as another tool would leave it: no ernie-nf4 metadata."""
    (package / METADATA_FILE).unlink()
    return package


def edit_same_size(path, old: str, new: str) -> None:
    assert len(old) == len(new)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def fill_with_nan(path) -> list[str]:
    """Every floating tensor of a safetensors file set to NaN in place (same size, same header)."""
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    names = []
    for name, entry in header.items():
        if name != "__metadata__" and entry["dtype"] in NAN_BITS:
            start, stop = (8 + length + offset for offset in entry["data_offsets"])
            pattern = NAN_BITS[entry["dtype"]]
            data[start:stop] = pattern * ((stop - start) // len(pattern))
            names.append(name)
    path.write_bytes(bytes(data))
    return names


def remeasure(package, rel: str) -> None:
    """Record a file's new sha256 in the metadata, as a build from an original with these bytes would have."""
    import hashlib

    meta = json.loads((package / METADATA_FILE).read_text())
    component, inner = rel.split("/", 1)
    record = meta["components"][component]["files"][inner]
    record["sha256"] = hashlib.sha256((package / rel).read_bytes()).hexdigest()
    (package / METADATA_FILE).write_text(json.dumps(meta))


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---------------------------------------------------------------- the label says what was checked


def test_the_label_says_which_files_were_hashed(tiny_package):
    default = check_package(tiny_package)
    assert default.verified and not default.provenance.startswith("verified")
    assert "sha256 of configs and tokenizers" in default.provenance and "--verify-sha256" in default.provenance
    assert package_stats(tiny_package).provenance == default.provenance  # what the Stats tab shows
    full = check_package(tiny_package, verify_sha256=True)
    assert full.provenance == "verified by ernie-nf4 metadata: sha256 of every file"


@pytest.mark.parametrize(
    "rel, old, new",
    [
        ("vae/config.json", '"silu"', '"silX"'),
        ("scheduler/scheduler_config.json", '"exponential"', '"exponentiaX"'),
        ("tokenizer/tokenizer_config.json", '"', "'"),
    ],
)
def test_a_same_size_edit_of_a_small_file_is_named_at_every_open(package, rel, old, new, nf4_everywhere):
    edit_same_size(package / rel, old, new)
    with pytest.raises(PackageError, match=rf"{rel}: sha256 differs from the metadata.*--overwrite"):
        load_pipeline(package, device="cpu")


def test_a_foreign_package_whose_config_does_not_build_names_the_component(foreign, nf4_everywhere):
    edit_same_size(foreign / "vae" / "config.json", '"silu"', '"silX"')
    with pytest.raises(PackageError, match=r"pkg/vae: the vae cannot be built from its files \(ValueError: .*silx"):
        load_pipeline(foreign, device="cpu")


def test_a_config_that_fails_while_the_model_is_built_is_named_and_leaves_torch_as_it_was(foreign, nf4_everywhere):
    import torch

    # diffusers builds the model with bfloat16 as torch's default dtype and, when building raises, leaves it so
    edit_same_size(foreign / "transformer" / "config.json", '"num_attention_heads": 2', '"num_attention_heads": 0')
    with pytest.raises(PackageError, match=r"pkg/transformer: the transformer cannot be built from its files \(Zero"):
        load_pipeline(foreign, device="cpu")
    assert torch.get_default_dtype() is torch.float32
    assert torch.ones(1).dtype is torch.float32


# ---------------------------------------------------------------- NaN weights


@pytest.mark.parametrize("rel", ["vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"])
@pytest.mark.parametrize("own_metadata", [True, False])
def test_nan_weights_are_refused_naming_the_file_and_tensor(package, rel, own_metadata):
    names = fill_with_nan(package / rel)
    assert names
    if own_metadata:
        remeasure(package, rel)  # the metadata vouches for these bytes: a build from a broken original
    else:
        (package / METADATA_FILE).unlink()
    with pytest.raises(PackageError, match=rf"{rel}: tensor '[^']+' holds NaN or infinite values; the weights"):
        load_pipeline(package, device="cpu")


def test_a_build_from_a_nan_original_is_refused_and_nothing_is_kept(tiny_original, tmp_path):
    from ernie_nf4.build.quantize import quantize_package

    original = shutil.copytree(tiny_original, tmp_path / "orig")
    fill_with_nan(original / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(PackageError, match=r"vae/diffusion_pytorch_model.safetensors: tensor '.*' holds NaN"):
        quantize_package(str(original), tmp_path / "out", components=("pe",), device="cpu")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- sane bounds, before any allocation


@pytest.mark.parametrize(
    "rel, field, value, shown",
    [
        ("transformer/config.json", "hidden_size", 10**9, "'hidden_size' is 1000000000, outside 0..131,072"),
        ("transformer/config.json", "num_layers", 10**6, "'num_layers' is 1000000, outside 0..4,096"),
        ("text_encoder/config.json", "vocab_size", -5, "'vocab_size' is -5, outside 0..2,097,152"),
        ("scheduler/scheduler_config.json", "num_train_timesteps", 10**12, "'num_train_timesteps' is 1000000000000"),
    ],
)
def test_configs_out_of_bounds_are_refused_naming_file_field_and_bound(foreign, rel, field, value, shown):
    config = json.loads((foreign / rel).read_text())
    config[field] = value
    (foreign / rel).write_text(json.dumps(config))
    with pytest.raises(PackageError, match=rf"{rel}: field {shown}"):
        check_package(foreign)


def test_a_nested_config_is_bounded_too(tiny_original, tmp_path):
    original = shutil.copytree(tiny_original, tmp_path / "orig")
    path = original / "text_encoder" / "config.json"
    config = json.loads(path.read_text())
    config["text_config"]["num_hidden_layers"] = 10**6
    path.write_text(json.dumps(config))
    with pytest.raises(PackageError, match=r"text_encoder/config.json: field 'text_config.num_hidden_layers'"):
        check_package(original)


# ---------------------------------------------------------------- deep JSON


@pytest.mark.parametrize("depth", [200, 100_000])
def test_deep_json_in_model_index_or_a_config_is_refused_by_name(foreign, depth):
    index = (foreign / "model_index.json").read_text()
    (foreign / "model_index.json").write_text(index.rstrip().rstrip("}") + f', "_deep": {deep(depth)}}}')
    with pytest.raises(PackageError, match=r"model_index.json: JSON nested deeper than 32 levels"):
        check_package(foreign)
    (foreign / "model_index.json").write_text(index)
    config = (foreign / "vae" / "config.json").read_text()
    (foreign / "vae" / "config.json").write_text(config.rstrip().rstrip("}") + f', "_deep": {deep(depth)}}}')
    with pytest.raises(PackageError, match=r"vae/config.json: JSON nested deeper than 32 levels"):
        check_package(foreign)


def test_deep_metadata_is_named_and_not_trusted(package):
    (package / METADATA_FILE).write_text('{"format_version": 1, "x": ' + deep(100_000) + "}")
    check = check_package(package)
    assert not check.verified
    assert any(f"{METADATA_FILE}: JSON nested deeper than 32 levels" in note for note in check.notes), check.notes
    stats = package_stats(package)
    assert stats is not None and not stats.verified


def test_stats_of_a_package_with_a_deep_model_index_name_it(foreign):
    (foreign / "model_index.json").write_text('{"_class_name": "ErnieImagePipeline", "vae": ' + deep(100_000) + "}")
    stats = package_stats(foreign)
    assert stats.provenance == "cannot be loaded" and "model_index.json: JSON nested deeper" in stats.notes[0]


def test_a_config_number_that_is_not_finite_is_refused_by_name(foreign):
    rel = "scheduler/scheduler_config.json"
    config = json.loads((foreign / rel).read_text())
    config["shift"] = float("nan")  # Python's json writes NaN; a scheduler built from it has no step to run
    (foreign / rel).write_text(json.dumps(config))
    with pytest.raises(PackageError, match=rf"{rel}: field 'shift' is nan; a config's numbers must be finite"):
        check_package(foreign)


# ---------------------------------------------------------------- files that are not what they claim


def test_a_weights_file_that_is_a_folder_is_refused_by_name(package):
    rel = "vae/diffusion_pytorch_model.safetensors"
    (package / rel).unlink()
    (package / rel).mkdir()
    with pytest.raises(PackageError, match=rf"{rel}: not a file \(a folder\)"):
        check_package(package)


@pytest.mark.parametrize("cut", ["empty", "half"])
def test_this_projects_metadata_cut_short_is_refused_not_taken_for_another_tools(package, cut):
    path = package / METADATA_FILE
    text = path.read_text()
    path.write_text("" if cut == "empty" else text[: len(text) // 2])
    with pytest.raises(PackageError, match=rf"{METADATA_FILE}: ernie-nf4's metadata, cut short or damaged"):
        check_package(package)
    path.write_text(json.dumps([{"tool": "another", "format_version": "x"}]))  # another tool's JSON: read, shown
    assert check_package(package).verified is False


def test_a_component_whose_weights_belong_to_another_model_is_refused_at_load(foreign, nf4_everywhere):
    import torch
    from safetensors.torch import save_file

    # a file of another model's tensors, none of them the VAE's own: diffusers leaves the VAE's on the meta device
    save_file({"encoder.other.weight": torch.ones(4, 4)}, str(foreign / "vae" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(PackageError, match=r"vae: the vae's weights files lack \d+ of its tensors \(such as 'encoder"):
        load_pipeline(foreign, device="cpu")


def test_verify_sha256_on_a_package_without_this_projects_metadata_says_there_is_nothing_to_check(foreign, caplog):
    with caplog.at_level("WARNING", logger="ernie_nf4"):
        check = check_package(foreign, verify_sha256=True)
    assert check.verified is False and not check.weights_hashed
    said = "verify_sha256: no ernie-nf4 metadata here to check the weights' sha256 against"
    assert said in check.notes and said in caplog.text
