"""Package integrity without the app: damaged packages refused by name, never a pickle, never remote code.
Runs wherever the library does (gradio not needed)."""

import json
import pickle
import shutil
from pathlib import Path

import pytest

from ernie_nf4.errors import PackageError
from ernie_nf4.package.metadata import METADATA_FILE
from ernie_nf4.runtime.loader import load_pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "missing_folder", "metadata_disagrees"])
def test_a_damaged_package_is_refused_when_opened(tiny_package, tmp_path, damage):
    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    weights = package / "text_encoder" / "model.safetensors"
    expect = "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "corrupt":
        data = bytearray(weights.read_bytes())
        data[-100:] = bytes(100)
        weights.write_bytes(bytes(data))
    elif damage == "missing_folder":
        shutil.rmtree(package / "vae")
        expect = "component folder 'vae' is missing"
    else:
        meta = json.loads((package / METADATA_FILE).read_text())
        meta["components"]["pe"]["files"]["config.json"]["bytes"] += 1
        (package / METADATA_FILE).write_text(json.dumps(meta))
        expect = "pe/config.json"
    with pytest.raises(PackageError, match=f"{expect}.*(re-download|--overwrite)"):
        load_pipeline(package, device="cpu", verify_sha256=damage == "corrupt")


class _Boom:
    def __reduce__(self):
        return (Path.write_text, (Path("/tmp/ernie-nf4-pickle-ran"), "pickle code ran"))


def test_only_safetensors_are_loaded_never_pickles(tiny_original, tmp_path):
    original = tmp_path / "orig"
    shutil.copytree(tiny_original, original)
    marker = Path("/tmp/ernie-nf4-pickle-ran")
    marker.unlink(missing_ok=True)
    (original / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (original / "vae" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"weight": _Boom()}))
    with pytest.raises(Exception, match="(?i)safetensors"):
        load_pipeline(original, device="cpu")
    assert not marker.exists()


def test_no_remote_code_is_ever_trusted():
    sources = [*ROOT.joinpath("ernie_nf4").rglob("*.py"), ROOT / "app.py", ROOT / "quantize.py"]
    assert all("trust_remote_code" not in p.read_text() for p in sources)


def test_the_app_service_checks_hashes_when_asked(tiny_package, tmp_path):
    from ernie_nf4.serving.service import ImageService, ServiceConfig

    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    weights = package / "pe" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-50:] = bytes(50)  # same size: only the hash can tell
    weights.write_bytes(bytes(data))
    service = ImageService(ServiceConfig(model_dir=str(package), device="cpu", verify_sha256=True))
    with pytest.raises(PackageError, match="pe/model.safetensors: sha256 differs"):
        service.load()


def test_a_package_naming_a_module_is_refused_and_its_code_never_runs(tiny_package, tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    marker = tmp_path / "payload-ran"
    (package / "pe" / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass X: pass\n")
    index = json.loads((package / "model_index.json").read_text())
    index["pe"] = ["pkg.pe.payload", "X"]
    (package / "model_index.json").write_text(json.dumps(index))
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(PackageError, match=r"component 'pe' names \['pkg.pe.payload', 'X'\], which is not allowed"):
            load_pipeline(package, device="cpu")
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists()
