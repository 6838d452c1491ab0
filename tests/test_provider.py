"""Getting the package: local folder, download (against a local Hub stand-in), or build."""

import pytest

from ernie_nf4.errors import PackageError
from ernie_nf4.package.metadata import verify_package
from ernie_nf4.serving.provider import download_package, ensure_package

from .support.hub_server import HubServer as HubStandIn


def test_download_gets_a_verified_package(tiny_package, tmp_path):
    with HubStandIn(tiny_package) as hub:
        out = download_package(hub.repo_id, tmp_path / "pkg", endpoint=hub.endpoint)
    assert verify_package(out, check_sha256=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_interrupted_download_resumes_and_is_never_used_half_done(tiny_package, tmp_path, monkeypatch):
    # huggingface_hub resumes from the last whole chunk it wrote (10 MB); small chunks let a tiny file show it.
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 4096)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    with HubStandIn(tiny_package) as hub:
        hub.cuts[weights] = (1, 50_000)  # one dropped connection after 50 kB: the client resumes and completes
        download_package(hub.repo_id, tmp_path / "pkg", endpoint=hub.endpoint)
        gets = [r for method, path, r in hub.requests if method == "GET" and path.endswith(weights)]
        assert gets[0] is None and gets[1].startswith("bytes=") and int(gets[1][6:].split("-")[0]) >= 40_000
        verify_package(tmp_path / "pkg", check_sha256=True)

        hub.cuts[weights] = (100, 1000)  # the connection keeps dropping: the download fails
        with pytest.raises(Exception):  # noqa: B017 - whatever the hub client raises
            download_package(hub.repo_id, tmp_path / "again", endpoint=hub.endpoint)
        assert not (tmp_path / "again").exists(), "a partial download must never look like a package"
        hub.cuts.clear()  # back online: the next call completes what is there
        download_package(hub.repo_id, tmp_path / "again", endpoint=hub.endpoint)
    verify_package(tmp_path / "again", check_sha256=True)


def test_ensure_package_prefers_local_then_download_then_build(tiny_package, tmp_path):
    assert ensure_package(tiny_package, repo_id="owner/x") == tiny_package
    with HubStandIn(tiny_package) as hub:
        messages = []
        out = ensure_package(
            tmp_path / "dl", repo_id=hub.repo_id, source=None, on_progress=messages.append, endpoint=hub.endpoint
        )
        assert verify_package(out) and messages[0].stage == "download" and messages[-1].done == messages[-1].total
        built = []

        def build(source, output, on_progress):
            built.append(source)
            raise RuntimeError("no GPU here")

        with pytest.raises(RuntimeError, match=r"(?s)download of owner/missing failed.*build from src failed.*no GPU"):
            ensure_package(tmp_path / "none", repo_id="owner/missing", source="src", build=build, endpoint=hub.endpoint)
        assert built == ["src"]
        assert not (tmp_path / "none").exists()


def test_a_broken_local_package_is_reported_not_replaced(tiny_package, tmp_path):
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(tiny_package, copy)
    (copy / "vae" / "config.json").write_text("{}")
    with pytest.raises(PackageError, match=r"vae/config.json: 2 bytes on disk, metadata says"):
        ensure_package(copy, repo_id="owner/x")
    assert (copy / "vae").is_dir()


def test_a_model_dir_where_nothing_can_be_written_is_named_before_any_download_or_build(tiny_package, tmp_path):
    from ernie_nf4.errors import PackageUnavailable

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with HubStandIn(tiny_package) as hub:
        for folder, words in (
            (a_file / "pkg", f"{a_file} is a file"),
            ("/sys/kernel/pkg", "/sys/kernel cannot be written"),
        ):
            with pytest.raises(PackageUnavailable, match=f"model_dir .*pkg: no package there.*{words}") as refused:
                ensure_package(folder, repo_id=hub.repo_id, source="src", build=None, endpoint=hub.endpoint)
            assert "network" not in str(refused.value)
            assert not [path for _, path, _ in hub.requests if path.endswith(".safetensors")]  # nothing fetched
