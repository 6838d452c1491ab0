"""Fixtures of the library tests: tiny random ERNIE-Image originals and NF4 packages, built once per session.

On a machine without CUDA, diffusers' bitsandbytes quantizer refuses to run ("No GPU found"); the
``nf4_everywhere`` fixture lifts that one environment check so the transformer's NF4 path runs on the
CPU. With a GPU nothing is patched: the same tests run on stock diffusers.
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from unittest import mock

import pytest
import torch

from ernie_nf4.build.quantize import quantize_package
from ernie_nf4.compat import inductor_default_cache_dir
from ernie_nf4.package.format import QUANTIZABLE
from ernie_nf4.synthetic.original import build_original

# Tests talk to loopback only: no analytics or telemetry calls out.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# torch.compile's kernel cache for the tests: not the user's ~/.cache
# (bitsandbytes' import sets the variable to Inductor's default, which the app replaces with its own: so do the tests)
if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, inductor_default_cache_dir()):
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "ernie-nf4-tests-inductor")
HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
warnings.filterwarnings("ignore", message=".*kernels.*")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA GPU: skipped, with the reason, where there is none."""
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def first_compile_here(tmp_path, monkeypatch):
    """Every test starts as a machine that never compiled the blocks (no record of a compile, ``compile_record``),
    while Inductor's kernel cache stays shared, so compiles stay quick."""
    from ernie_nf4.runtime import compile_record

    monkeypatch.setattr(compile_record, "FOLDER", str(tmp_path / "compile-records"))


@pytest.fixture(autouse=True)
def torch_left_as_found():
    """After each test, a compile it left running in the background is waited for (it would otherwise run into the
    next test), and torch's default dtype must be float32 again: the test that leaves it otherwise is named."""
    yield
    for thread in threading.enumerate():
        if thread.name == "ernie-nf4-compile":
            thread.join(300)
            assert not thread.is_alive(), "a compile this test started still runs after 300 s"
    left = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the tests after this one start clean
    assert left is torch.float32, f"the default dtype was left at {left}"


@pytest.fixture(scope="session")
def nf4_everywhere():
    """Lift diffusers' GPU-only environment check when there is no GPU; no-op with CUDA."""
    if HAS_CUDA:
        yield
        return
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer

    with mock.patch.object(BnB4BitDiffusersQuantizer, "validate_environment", lambda self, *a, **k: None):
        yield


@pytest.fixture(scope="session")
def tiny_original(tmp_path_factory):
    return build_original(tmp_path_factory.mktemp("orig") / "ERNIE-Image-tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_package(tiny_original, tmp_path_factory, nf4_everywhere):
    """All three of transformer, text_encoder and pe in NF4."""
    out = tmp_path_factory.mktemp("pkg") / "ERNIE-Image-tiny-NF4"
    return quantize_package(str(tiny_original), out, components=QUANTIZABLE, device=DEVICE)


@pytest.fixture(scope="session")
def tiny_generator(tiny_package, nf4_everywhere):
    from ernie_nf4.runtime.generation import Generator

    return Generator.from_pretrained(tiny_package, device=DEVICE, max_pe_tokens=12, prompt_cache_size=0)


def model_tensors(model):
    """Every tensor a forward of ``model`` reads: parameters, buffers and bitsandbytes' NF4 quantization states."""
    from ernie_nf4.compat import quant_state_tensors

    for param in model.parameters():
        yield param.data
        state = getattr(param, "quant_state", None)
        if state is not None:
            yield from (getattr(owner, attr) for owner, attr in quant_state_tensors(state))
    yield from model.buffers()
