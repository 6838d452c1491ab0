"""The LoRAs an app offers: ``NAME=SOURCE`` entries, a folder of them, and their files got from disk or from a Hub
(a local stand-in served on loopback) through the Hugging Face cache, offline the second time."""

import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save

from ernie_nf4.errors import InvalidArgument, PackageUnavailable
from ernie_nf4.serving.loras import (
    LoraSource,
    fetch_lora,
    loras_in_folder,
    offered_loras,
    parse_lora,
    parse_lora_list,
)

from .support.app import ROOT
from .support.hub_server import HubServer


def lora_bytes(rank: int = 4) -> bytes:
    """A small LoRA file as diffusers writes one (safetensors, A/B pairs), made with the safetensors library."""
    down = np.full((rank, 16), 0.5, np.float32)
    return save(
        {
            "transformer.layers.0.attn.to_q.lora_A.weight": down,
            "transformer.layers.0.attn.to_q.lora_B.weight": down.T.copy(),
        }
    )


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """The Hub stand-in with LoRA repos, and an empty Hugging Face cache under ``tmp_path``."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with HubServer() as server:
        server.add_repo("owner/one", {"README.md": b"# one", "style.safetensors": lora_bytes(2)})
        server.add_repo(
            "owner/diffusers",
            {"pytorch_lora_weights.safetensors": lora_bytes(4), "other.safetensors": lora_bytes(8)},
        )
        server.add_repo("owner/several", {"a.safetensors": lora_bytes(), "b.safetensors": lora_bytes()})
        server.add_repo("owner/deep", {"sub/dir/file.safetensors": lora_bytes(3), "x.safetensors": lora_bytes()})
        yield server


def fetched(hub, name, source) -> bytes:
    return fetch_lora(LoraSource(name, source), endpoint=hub.endpoint).read_bytes()


def test_a_repo_with_one_file_gives_it(hub):
    assert fetched(hub, "one", "owner/one") == hub.files("owner/one")["style.safetensors"]


def test_a_repo_with_several_files_gives_diffusers_name(hub):
    assert fetched(hub, "d", "owner/diffusers") == hub.files("owner/diffusers")["pytorch_lora_weights.safetensors"]


def test_a_repo_with_several_files_and_no_diffusers_name_is_refused_listing_them(hub):
    with pytest.raises(PackageUnavailable) as refused:
        fetched(hub, "pick", "owner/several")
    message = str(refused.value)
    for word in ("'pick'", "a.safetensors", "b.safetensors", "owner/several/FILE.safetensors"):
        assert word in message, message


def test_a_file_in_a_repo_is_named_by_its_path(hub):
    assert fetched(hub, "deep", "owner/deep/sub/dir/file.safetensors") == lora_bytes(3)


def test_a_missing_repo_or_file_is_named(hub):
    for source in ("owner/missing", "owner/deep/sub/none.safetensors"):
        with pytest.raises(PackageUnavailable, match=rf"lora 'gone'.*{source}"):
            fetched(hub, "gone", source)


def test_a_second_fetch_works_offline_from_the_cache(hub, tmp_path):
    cache = tmp_path / "hf-cache"
    first = [fetched(hub, "one", "owner/one"), fetched(hub, "deep", "owner/deep/sub/dir/file.safetensors")]
    hub.__exit__()  # the Hub is gone: only the cache answers
    code = (
        "from ernie_nf4.serving.loras import LoraSource, fetch_lora\n"
        "for source in ('owner/one', 'owner/deep/sub/dir/file.safetensors'):\n"
        "    print(fetch_lora(LoraSource('x', source)))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": hub.endpoint}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert all(path.startswith(str(cache)) for path in paths)
    assert [open(path, "rb").read() for path in paths] == first


def test_local_files_must_exist_and_be_safetensors(tmp_path):
    good = tmp_path / "style.safetensors"
    good.write_bytes(lora_bytes())
    assert fetch_lora(LoraSource("style", str(good))) == good
    with pytest.raises(InvalidArgument, match=r"lora 'gone': .*missing.safetensors is not a file"):
        fetch_lora(LoraSource("gone", str(tmp_path / "missing.safetensors")))
    for suffix in (".bin", ".ckpt"):
        other = tmp_path / f"style{suffix}"
        other.write_bytes(b"pickle")
        with pytest.raises(InvalidArgument, match=rf"lora 'old': style{suffix} is not a .safetensors file"):
            fetch_lora(LoraSource("old", str(other)))
    with pytest.raises(InvalidArgument, match=r"lora 'rel': folder/style.bin is not a file"):
        fetch_lora(LoraSource("rel", "folder/style.bin"))  # a relative path, not the Hub repo "folder/style.bin"


def test_entries_folders_and_duplicates(tmp_path):
    assert parse_lora(" style = ./a.safetensors ") == LoraSource("style", "./a.safetensors")
    listed = parse_lora_list("a=owner/a; b=./b.safetensors\n\nc=owner/c/x.safetensors")
    assert [s.name for s in listed] == ["a", "b", "c"]
    for text in ("style", "=owner/x", "a:b=owner/x", "<a>=owner/x"):
        with pytest.raises(InvalidArgument, match="--lora"):
            parse_lora(text)
    (tmp_path / "ink.safetensors").write_bytes(lora_bytes())
    (tmp_path / "notes.txt").write_text("not a LoRA")
    assert loras_in_folder(tmp_path) == [LoraSource("ink", str(tmp_path / "ink.safetensors"))]
    with pytest.raises(InvalidArgument, match="--lora-dir .*not a folder"):
        loras_in_folder(tmp_path / "none")
    with pytest.raises(InvalidArgument, match=r"lora 'ink' is given twice"):
        offered_loras(listed, [LoraSource("ink", "owner/x")], loras_in_folder(tmp_path))
