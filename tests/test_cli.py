"""quantize.py end to end through subprocess, as a user runs it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ernie_nf4.package.metadata import read_metadata, verify_package

from .support.fixtures import HAS_CUDA

pytestmark = [pytest.mark.nf4, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
# Without a GPU only the text encoder and PE can be quantized (diffusers refuses the transformer).
COMPONENTS = [] if HAS_CUDA else ["--components", "text_encoder", "pe", "--device", "cpu"]
NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "quantize.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300
    )


def test_help_lists_every_flag():
    result = run("--help")
    assert result.returncode == 0
    for flag in ("--source", "--output", "--components", "--revision", "--overwrite", "--device", "--keep-vision"):
        assert flag in result.stdout


def test_bad_source_is_named(tmp_path):
    result = run("--source", tmp_path / "nowhere", "--output", tmp_path / "out")
    assert result.returncode == 2
    assert f"source {tmp_path / 'nowhere'}: no such folder" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run("--source", tmp_path / "empty", "--output", tmp_path / "out")
    assert "no model_index.json" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_output_that_cannot_be_written_is_refused_before_the_build(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for output, words in (
        (a_file / "pkg", f"{a_file} is a file"),
        ("/sys/kernel/pkg", "/sys/kernel cannot be written"),
    ):
        result = run("--source", tmp_path / "nowhere", "--output", output)
        assert result.returncode == 2 and f"--output {output}: {words}" in result.stderr, result.stderr
        assert "nowhere" not in result.stderr  # before the source is even looked at


def test_a_cut_weights_file_in_the_source_is_named_before_any_work_with_the_fix_that_helps(tiny_original, tmp_path):
    import shutil

    source = shutil.copytree(tiny_original, tmp_path / "original")
    weights = source / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # as a download cut short leaves it
    result = run("--source", source, "--output", tmp_path / "out", *COMPONENTS)
    assert result.returncode == 2, result.stderr
    assert f"source {source}: {weights}" in result.stderr and "download the original again" in result.stderr
    assert "quantize.py --overwrite" not in result.stderr and ".building" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_not_an_ernie_pipeline_is_refused(tmp_path):
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    result = run("--source", tmp_path / "sd", "--output", tmp_path / "out")
    assert result.returncode == 2
    assert "'StableDiffusionPipeline', expected 'ErnieImagePipeline'" in result.stderr


def test_unknown_component_is_refused(tiny_original, tmp_path):
    result = run("--source", tiny_original, "--output", tmp_path / "out", "--components", "vae")
    assert result.returncode == 2
    assert "invalid choice: 'vae'" in result.stderr


def test_transformer_without_gpu_says_what_can_run(tiny_original, tmp_path):
    result = run("--source", tiny_original, "--output", tmp_path / "out", env=NO_GPU)
    assert result.returncode == 2
    assert "quantizing the transformer needs a CUDA GPU" in result.stderr
    assert "--components text_encoder pe --device cpu" in result.stderr


def test_loader_without_gpu_refuses_an_nf4_transformer(tiny_package):
    code = f"from ernie_nf4.runtime.loader import load_pipeline; load_pipeline({str(tiny_package)!r}, device='cpu')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=NO_GPU)
    assert result.returncode != 0
    assert "its transformer is NF4, which diffusers loads only on a CUDA GPU" in result.stderr


def test_existing_output_is_refused_then_replaced_with_overwrite(tiny_original, tmp_path):
    out = tmp_path / "pkg"
    first = run("--source", tiny_original, "--output", out, *COMPONENTS)
    assert first.returncode == 0, first.stderr
    assert "quantizing text_encoder" in first.stderr
    created = read_metadata(out)["created_at"]
    refused = run("--source", tiny_original, "--output", out, *COMPONENTS)
    assert refused.returncode == 2
    assert "exists; pass --overwrite" in refused.stderr
    time.sleep(1.1)
    replaced = run("--source", tiny_original, "--output", out, "--overwrite", *COMPONENTS)
    assert replaced.returncode == 0, replaced.stderr
    assert read_metadata(out)["created_at"] != created
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_killed_build_keeps_the_old_package_and_the_next_run_cleans_up(tiny_original, tmp_path):
    out = tmp_path / "pkg"
    assert run("--source", tiny_original, "--output", out, *COMPONENTS).returncode == 0
    old = read_metadata(out)["created_at"]
    args = ["quantize.py", "--source", tiny_original, "--output", out, "--overwrite", *COMPONENTS]
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".pkg.building-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert list(tmp_path.glob(".pkg.building-*")), "a leftover of the killed build"
    assert verify_package(out, check_sha256=True)["created_at"] == old
    again = run("--source", tiny_original, "--output", out, "--overwrite", *COMPONENTS)
    assert again.returncode == 0, again.stderr
    assert "removing leftover" in again.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]
    verify_package(out, check_sha256=True)
