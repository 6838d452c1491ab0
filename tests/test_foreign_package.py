"""Packages this project did not write: laid out like the published Xiejiehang/ERNIE-Image-NF4 (plain
transformers/diffusers ``save_pretrained`` with ``BitsAndBytesConfig``, its own metadata schema, the whole
``Mistral3Model`` text encoder, repo extras), built here without quantize.py, then used through ``--model-dir``, the
Hub download path (root and subfolder layouts) and the real app's ``/generate`` and ``/stats``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ernie_nf4.errors import PackageError
from ernie_nf4.package.check import check_package
from ernie_nf4.serving.provider import download_package

from .support.hub_server import HubServer

FOREIGN_METADATA = {  # another tool's schema: no format_version, other field names
    "model": "ERNIE-Image-NF4",
    "quantization": {"library": "bitsandbytes", "type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"},
    "total_size": {"original_bytes": 31_648_081_051, "quantized_bytes": 9_301_075_597},
    "validated_on": "NVIDIA GeForce RTX 3060",
}
EXTRAS = {
    "README.md": "# ERNIE-Image-NF4\nA 4-bit package.\n",
    ".gitattributes": "*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    # Scripts that ship with the published ERNIE-Image-NF4 package: loading must never run them.
    "quantize_ernie_image_nf4.py": "open('RAN_PACKAGE_CODE', 'w').write('yes')\n",
    "validate_quantized_ernie_image.py": "open('RAN_PACKAGE_CODE', 'w').write('yes')\n",
}


def write_foreign_package(original, out, transformer_nf4: bool):
    """Quantize as the published ERNIE-Image-NF4 model card describes: each model with its library's
    BitsAndBytesConfig, saved with save_pretrained; the text encoder whole (vision tower included);
    other components copied."""
    from diffusers import BitsAndBytesConfig as DiffusersBnb
    from diffusers import ErnieImageTransformer2DModel
    from PIL import Image
    from transformers import BitsAndBytesConfig as TransformersBnb
    from transformers import Ministral3ForCausalLM, Mistral3Model

    settings = dict(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    out.mkdir(parents=True)
    for name, cls in (("text_encoder", Mistral3Model), ("pe", Ministral3ForCausalLM)):
        model = cls.from_pretrained(
            original / name, quantization_config=TransformersBnb(**settings), dtype=torch.bfloat16
        )
        model.save_pretrained(out / name)
    if transformer_nf4:
        model = ErnieImageTransformer2DModel.from_pretrained(
            original / "transformer",
            quantization_config=DiffusersBnb(**settings),
            torch_dtype=torch.bfloat16,
            device_map={"": "cuda" if torch.cuda.is_available() else "cpu"},
        )
        model.save_pretrained(out / "transformer")
    else:
        shutil.copytree(original / "transformer", out / "transformer")
    for name in ("vae", "scheduler", "tokenizer", "pe_tokenizer"):
        shutil.copytree(original / name, out / name)
    shutil.copy(original / "model_index.json", out / "model_index.json")
    (out / "quantization_metadata.json").write_text(json.dumps(FOREIGN_METADATA, indent=2))
    for rel, text in EXTRAS.items():
        (out / rel).write_text(text)
    Image.new("RGB", (32, 32), "orange").save(out / "demo_output.png")
    return out


@pytest.fixture(scope="session")
def foreign_package(tiny_original, tmp_path_factory, nf4_everywhere):
    """All three models in NF4, written the other tool's way."""
    return write_foreign_package(tiny_original, tmp_path_factory.mktemp("foreign") / "ERNIE-Image-NF4", True)


@pytest.fixture(scope="session")
def foreign_mixed_package(tiny_original, tmp_path_factory):
    """NF4 text encoder and PE, bf16 transformer: loads on a CPU without lifting any guard."""
    return write_foreign_package(tiny_original, tmp_path_factory.mktemp("mixed") / "ERNIE-Image-NF4", False)


@pytest.mark.nf4
def test_a_foreign_package_loads_generates_and_is_described(foreign_package, tmp_path, nf4_everywhere):
    from ernie_nf4.request import GenerationRequest
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    check = check_package(foreign_package)
    assert not check.verified and check.foreign_metadata == FOREIGN_METADATA
    assert check.components["text_encoder"] == ["transformers", "Mistral3Model"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    service = ImageService(ServiceConfig(model_dir=str(foreign_package), device=device, max_pe_tokens=8))
    result = service.generate(GenerationRequest("一只猫 a cat", width=64, height=64, num_inference_steps=2, seed=3))
    assert result.images[0].size == (64, 64) and result.enhancement.tokens == 8 and result.enhancement.cut
    assert "not verified by ernie-nf4 metadata" in service.provenance
    stats = service.stats()
    package = stats.package
    assert package.verified is False and package.bytes_before is None  # the original's sizes: unknown, not invented
    assert {c.name: c.quantized for c in package.components} == {
        "scheduler": False,
        "pe": True,
        "pe_tokenizer": False,
        "text_encoder": True,
        "tokenizer": False,
        "transformer": True,
        "vae": False,
    }
    for c in package.components:
        on_disk = sum(f.stat().st_size for f in (foreign_package / c.name).rglob("*") if f.is_file())
        assert c.bytes_on_disk == on_disk and c.bytes_before is None
    from ernie_nf4.webapp.stats_view import stats_markdown

    text = stats_markdown(stats)
    assert "not verified by ernie-nf4 metadata" in text and "31,648,081,051" in text and "RTX 3060" in text
    assert "unknown" in text
    assert not (tmp_path / "RAN_PACKAGE_CODE").exists() and not os.path.exists("RAN_PACKAGE_CODE")


def test_a_truncated_or_damaged_safetensors_file_is_refused_by_name(foreign_mixed_package, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(foreign_mixed_package, copy)
    weights = next((copy / "pe").glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(PackageError, match=rf"{weights}: .* \(truncated\); re-download"):
        check_package(copy)
    header_length = int.from_bytes(data[:8], "little")
    damaged = bytearray(data)
    damaged[8 + header_length // 2] = ord("\x01")  # same size, a byte inside the JSON header changed
    weights.write_bytes(bytes(damaged))
    with pytest.raises(PackageError, match=rf"{weights}: safetensors (header is not valid JSON|entry)"):
        check_package(copy)


def test_same_size_damage_in_an_own_package_header_is_caught_without_sha256(tiny_package, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(tiny_package, copy)
    weights = next((copy / "vae").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    header = data[8 : 8 + int.from_bytes(data[:8], "little")]
    position = 8 + header.index(b'"F32"' if b'"F32"' in header else b'"BF16"') + 1
    data[position] = ord("I")  # F32 -> I32 (or BF16 -> IF16): still valid JSON, same size, other meaning
    weights.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=rf"{weights}: "):
        check_package(copy)


@pytest.mark.parametrize("subfolder", ["", "ERNIE-Image-NF4"])
def test_download_of_a_foreign_package_at_the_root_or_in_a_subfolder(foreign_mixed_package, tmp_path, subfolder):
    prefix = f"{subfolder}/" if subfolder else ""
    files = {
        prefix + p.relative_to(foreign_mixed_package).as_posix(): p.read_bytes()
        for p in foreign_mixed_package.rglob("*")
        if p.is_file()
    }
    files["README.md"] = b"# the repo's own card\n"
    events = []
    with HubServer() as hub:
        hub.add_repo("seed/ERNIE-Image-NF4", files)
        out = download_package(
            "seed/ERNIE-Image-NF4", tmp_path / "pkg", endpoint=hub.endpoint, on_progress=events.append
        )
    assert check_package(out).foreign_metadata == FOREIGN_METADATA
    assert (out / "model_index.json").is_file() and (out / "demo_output.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # nothing left beside it
    total = sum(len(v) for k, v in files.items() if k.startswith(prefix))
    assert events[0].stage == "download" and events[0].total == total and events[-1].done == total
    assert all(e.unit == "bytes" for e in events)


def test_a_download_that_cannot_be_loaded_is_removed_and_explained(foreign_mixed_package, tmp_path):
    files = {
        p.relative_to(foreign_mixed_package).as_posix(): p.read_bytes()
        for p in foreign_mixed_package.rglob("*")
        if p.is_file()
    }
    name = next(k for k in files if k.startswith("vae/") and k.endswith(".safetensors"))
    files[name] = files[name][:-10]
    with HubServer() as hub:
        hub.add_repo("seed/broken", files)
        with pytest.raises(
            PackageError, match=rf"seed/broken downloaded but cannot be loaded, so it was removed: .*{name}"
        ):
            download_package("seed/broken", tmp_path / "pkg", endpoint=hub.endpoint)
    assert list(tmp_path.iterdir()) == []


def test_download_refuses_early_when_the_disk_is_too_small(foreign_mixed_package, tmp_path, monkeypatch):
    import shutil as shutil_module

    from ernie_nf4.errors import EnvironmentUnsupported

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr("ernie_nf4.serving.provider.shutil.disk_usage", lambda path: usage._replace(free=999))
    files = {
        p.relative_to(foreign_mixed_package).as_posix(): p.read_bytes()
        for p in foreign_mixed_package.rglob("*")
        if p.is_file()
    }
    with HubServer() as hub:
        hub.add_repo("seed/big", files)
        with pytest.raises(EnvironmentUnsupported, match=r"the package needs [\d.]+ [kM]B more, 999 B free there"):
            download_package("seed/big", tmp_path / "pkg", endpoint=hub.endpoint)
        assert not any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests)


def test_quantize_on_an_already_quantized_source_says_so_in_one_line(foreign_mixed_package, tmp_path):
    ROOT = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        "quantize.py",
        "--source",
        str(foreign_mixed_package),
        "--output",
        str(tmp_path / "o"),
        "--components",
        "text_encoder",
        "pe",
        "--device",
        "cpu",
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "already quantized (text_encoder, pe in 4-bit)" in errors[0] and "--model-dir" in errors[0]


@pytest.mark.slow
def test_the_app_downloads_serves_and_describes_a_foreign_package(foreign_mixed_package, tmp_path):
    """The real app, as a user starts it, with the package published in a subfolder of a Hub repo."""
    from gradio_client import Client

    from .support.app import ROOT, free_port

    files = {
        "ERNIE-Image-NF4/" + p.relative_to(foreign_mixed_package).as_posix(): p.read_bytes()
        for p in foreign_mixed_package.rglob("*")
        if p.is_file()
    }
    with HubServer() as hub:
        hub.add_repo("seed/ERNIE-Image-NF4", files)
        port, model_dir = free_port(), tmp_path / "ERNIE-Image-NF4"
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
        }
        cmd = [
            sys.executable,
            "app.py",
            "--device",
            "cpu",
            "--repo-id",
            "seed/ERNIE-Image-NF4",
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
            "--max-pe-tokens",
            "6",
        ]
        log = tmp_path / "app.log"
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                    break
                except Exception:
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.5)
            images, seed, revised, info = client.predict(
                "a poster that says HELLO", "", 64, 64, 2, 4.0, 11, False, True, 1, api_name="/generate"
            )
            stats = client.predict(api_name="/stats")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(log.read_text())
    assert len(images) == 1 and seed == 11 and revised
    assert "PE wrote 6 tokens (cut at the cap of 6)" in info and "not verified by ernie-nf4 metadata" in info
    package = stats["package"]
    assert package["verified"] is False and package["foreign_metadata"] == FOREIGN_METADATA
    assert package["name"] == "ERNIE-Image-NF4" and str(tmp_path) not in json.dumps(stats)
    quantized = {c["name"]: c["quantized"] for c in package["components"]}
    assert quantized["pe"] and quantized["text_encoder"] and not quantized["transformer"]
    assert all(c["bytes_before"] is None for c in package["components"])


def test_a_root_package_beside_another_pipeline_and_look_alike_names(foreign_mixed_package, tmp_path):
    files = {
        p.relative_to(foreign_mixed_package).as_posix(): p.read_bytes()
        for p in foreign_mixed_package.rglob("*")
        if p.is_file()
    }
    files["old_model_index.json"] = b"{}"  # only a file named exactly model_index.json marks a pipeline
    files["bf16/model_index.json"] = files["model_index.json"]
    files["bf16/transformer/diffusion_pytorch_model.safetensors"] = b"x" * 5000
    with HubServer() as hub:
        hub.add_repo("seed/two", files)
        out = download_package("seed/two", tmp_path / "pkg", endpoint=hub.endpoint)
        fetched = {path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path}
    assert check_package(out).foreign_metadata == FOREIGN_METADATA
    assert not (out / "bf16").exists() and not any("/bf16/" in path for path in fetched)


def test_a_header_with_offsets_of_the_wrong_type_is_refused_by_name(tmp_path):
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    from ernie_nf4.package.safetensors_header import read_safetensors_header

    with pytest.raises(PackageError, match=r"model.safetensors: safetensors entry 'w' is malformed"):
        read_safetensors_header(path)
