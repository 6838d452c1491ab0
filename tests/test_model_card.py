"""The package's README.md model card: Hub front matter, and every figure equal to the metadata."""

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from ernie_nf4.build.model_card import TAGS, model_card, source_license
from ernie_nf4.package.metadata import read_metadata, verify_package

from .support.fixtures import DEVICE


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "the card must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def table(text: str, heading: str) -> list[list[str]]:
    """Rows (cells) of the first markdown table after ``heading``."""
    section = text.split(heading, 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    lines = []
    for line in rows:
        if line.startswith("|---"):
            continue
        lines.append([cell.strip() for cell in line.strip("|").split("|")])
        if line.startswith("| **total**"):
            break
    return lines


def number(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_every_package_has_a_card_whose_front_matter_is_hub_yaml(tiny_package):
    text = (tiny_package / "README.md").read_text()
    assert text == model_card(read_metadata(tiny_package)), "the card is generated from the metadata"
    meta = front_matter(text)
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-image"
    assert meta["tags"] == list(TAGS)
    assert "base_model" not in meta, "a local source folder is not a Hub model id"
    assert "license" not in meta, "the tiny original has no card, so no license is known"
    assert read_metadata(tiny_package)["source"]["license"] is None
    verify_package(tiny_package)  # the card is outside the files the metadata lists


def test_size_table_equals_the_metadata(tiny_package):
    meta = read_metadata(tiny_package)
    header, *rows = table(model_card(meta), "## Size")
    assert header == ["component", "action", "bytes before", "bytes after", "reduction"]
    by_name = {row[0].strip("`*"): row for row in rows}
    for name, record in meta["components"].items():
        _, action, before, after, reduction = by_name.pop(name)
        assert action == record["action"]
        assert (number(before), number(after)) == (record["bytes_before"], record["bytes_after"])
        assert float(reduction.rstrip("%")) == pytest.approx(100 * record["reduction"], abs=0.005)
    total = by_name.pop("total")
    assert (number(total[2]), number(total[3])) == (meta["totals"]["bytes_before"], meta["totals"]["bytes_after"])
    assert float(total[4].rstrip("%")) == pytest.approx(100 * meta["totals"]["reduction"], abs=0.005)
    # what is left is model_index.json: the rows add up to the totals
    assert list(by_name) == ["model_index.json"]
    assert sum(number(row[2]) for row in rows[:-1]) == meta["totals"]["bytes_before"]
    assert sum(number(row[3]) for row in rows[:-1]) == meta["totals"]["bytes_after"]


def test_card_says_what_was_left_out_and_that_no_benchmark_was_recorded(tiny_package):
    meta = read_metadata(tiny_package)
    text = model_card(meta)
    dropped = meta["components"]["text_encoder"]["left_out"]
    section = text.split("## Left out", 1)[1].split("\n## ", 1)[0]
    for module in dropped["modules"]:
        assert f"`{module}`" in section
    assert f"{dropped['parameters']:,} parameters" in section and dropped["why"] in section
    assert "No benchmark was recorded" in text
    for key, value in meta["quantization"].items():
        assert re.search(rf"`{key}`: `{re.escape(str(value).lower())}`|`{key}`: `\"{value}\"`", text), key


def test_hub_source_gives_base_model_license_and_commit(tiny_package):
    meta = copy.deepcopy(read_metadata(tiny_package))
    meta["source"].update(id="baidu/ERNIE-Image", revision="v1", commit="ab" * 20, license="apache-2.0")
    text = model_card(meta, repo_id="someone/ERNIE-Image-NF4")
    fm = front_matter(text)
    assert fm["base_model"] == "baidu/ERNIE-Image" and fm["license"] == "apache-2.0"
    assert "`v1`" in text and "ab" * 20 in text
    assert 'ErnieImagePipeline.from_pretrained("someone/ERNIE-Image-NF4"' in text
    assert "python app.py --repo-id someone/ERNIE-Image-NF4" in text and "--model-dir" in text
    for name, loader in (
        ("transformer", "AutoModel"),
        ("text_encoder", "TransformersAutoModel"),
        ("pe", "AutoModelForCausalLM"),
    ):
        assert f'{name} = {loader}.from_pretrained(repo, subfolder="{name}"' in text


def test_license_is_read_from_the_source_card(tmp_path):
    assert source_license(tmp_path) is None
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# A model\n")
    assert source_license(tmp_path) == "apache-2.0"
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert source_license(tmp_path) is None


def test_benchmark_write_metadata_regenerates_the_card(tiny_package, tmp_path, nf4_everywhere):
    from ernie_nf4.benchmark.run import benchmark
    from ernie_nf4.runtime.generation import GenerationRequest

    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    request = GenerationRequest(
        "a cat", width=64, height=64, num_inference_steps=2, guidance_scale=4.0, seed=1, use_pe=False
    )
    report = benchmark(
        None, str(package), modes=["nf4"], request=request, repeat=1, device=DEVICE, write_metadata=True, log=str
    )
    text = (package / "README.md").read_text()
    assert text == model_card(read_metadata(package)), "the card on disk follows the new metadata"
    assert "No benchmark was recorded" not in text
    assert report["measured_at"] in text and "benchmarks.64x64-2steps-nope" in text
    assert ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) in text
    header, row = table(text, "## Benchmarks")[:2]
    cells = dict(zip(header, row, strict=True))
    (mode,) = report["modes"]
    assert cells["mode"] == "nf4"
    assert float(cells["ms/step"]) == pytest.approx(mode["ms_per_step"], abs=0.05)
    assert float(cells["total s"]) == pytest.approx(mode["seconds"]["total"], abs=0.005)
    assert not list(package.glob("*.tmp"))


def test_quantize_copies_the_source_license_into_metadata_and_card(tiny_original, tmp_path):
    from ernie_nf4.build.quantize import quantize_package

    source = Path(shutil.copytree(tiny_original, tmp_path / "orig"))
    (source / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: diffusers\n---\n# ERNIE-Image\n")
    package = quantize_package(str(source), tmp_path / "pkg", components=["pe"], device="cpu")
    assert read_metadata(package)["source"]["license"] == "apache-2.0"
    assert front_matter((package / "README.md").read_text())["license"] == "apache-2.0"
