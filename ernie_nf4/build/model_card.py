"""The package's ``README.md``: a Hugging Face model card written from ``quantization_metadata.json`` alone.

``model_card(metadata)`` renders it (YAML front matter for the Hub, then the quantization settings, the
per-component size table, what was left out, recorded benchmarks and load snippets); ``write_model_card``
writes it into a package. Every figure comes from the metadata: nothing is measured or assumed here.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from ..formatting import markdown_table
from ..package.metadata import read_metadata

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
TAGS = ("nf4", "bitsandbytes", "4-bit", "ernie-image", "text-to-image")
PLACEHOLDER_REPO = "USER/REPO"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(source_id: str | None) -> str | None:
    """``source_id`` when it is a Hub repo id (``owner/name``), None for a local path."""
    return source_id if source_id and _HUB_ID.match(source_id) else None


def source_license(folder: str | Path) -> str | None:
    """The ``license`` in the front matter of ``folder/README.md`` (a Hub model card), or None."""
    from huggingface_hub.repocard import metadata_load

    card = Path(folder) / CARD_FILE
    if not card.is_file():
        return None
    try:
        value = (metadata_load(card) or {}).get("license")
    except Exception as err:  # a malformed card is not worth failing a build over
        logger.warning("could not read the license from %s (%s: %s)", card, type(err).__name__, err)
        return None
    return value if isinstance(value, str) and value else None


def _yaml_scalar(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def front_matter(metadata: dict) -> str:
    source = metadata["source"]
    lines = ["---"]
    base = hub_id(source.get("id"))
    if base:
        lines += [f"base_model: {_yaml_scalar(base)}", "base_model_relation: quantized"]
    if source.get("license"):
        lines.append(f"license: {_yaml_scalar(source['license'])}")
    lines += ["library_name: diffusers", "pipeline_tag: text-to-image", "tags:"]
    lines += [f"- {_yaml_scalar(tag)}" for tag in TAGS]
    lines.append("---")
    return "\n".join(lines)


def _bytes(value: int) -> str:
    return f"{value:,}"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.2f}%"


def source_section(metadata: dict) -> list[str]:
    source, build = metadata["source"], metadata.get("build") or {}
    where = source.get("id")
    lines = ["## Source", ""]
    if hub_id(where):
        lines.append(f"- Original: [`{where}`](https://huggingface.co/{where})")
    else:
        lines.append(f"- Original: a local folder, `{where}`")
    lines.append(f"- Revision: `{source.get('revision') or 'main (default)'}`")
    lines.append(f"- Commit: `{source['commit']}`" if source.get("commit") else "- Commit: not recorded")
    lines.append(f"- License: {source['license']}" if source.get("license") else "- License: not recorded")
    made = f"- Built {metadata['created_at']}"
    if metadata.get("created_by"):
        made += f" by {metadata['created_by']}"
    if metadata.get("gpu") or metadata.get("device"):
        made += f" on {metadata.get('gpu') or metadata.get('device')}"
    if build.get("seconds") is not None:
        made += f" in {build['seconds']:.1f} s"
    if build.get("peak_vram_allocated_bytes") is not None:
        made += f", peak VRAM {_bytes(build['peak_vram_allocated_bytes'])} B allocated"
    return [*lines, made]


def settings_section(metadata: dict) -> list[str]:
    lines = ["## Quantization", ""]
    lines += [f"- `{key}`: `{json.dumps(value)}`" for key, value in metadata["quantization"].items()]
    quantized = metadata.get("components_quantized") or [
        n for n, c in metadata["components"].items() if c["action"] == "quantized"
    ]
    kept = metadata.get("components_kept") or [n for n, c in metadata["components"].items() if c["action"] == "copied"]
    lines.append(f"- Quantized to NF4: {', '.join(f'`{n}`' for n in quantized) or 'none'}")
    lines.append(f"- Copied unchanged: {', '.join(f'`{n}`' for n in kept) or 'none'}")
    versions = ", ".join(f"{k} {v}" for k, v in metadata["versions"].items() if v)
    return [*lines, f"- Libraries: {versions}"]


def size_section(metadata: dict) -> list[str]:
    components, total = metadata["components"], metadata["totals"]
    lines = [
        "## Size",
        "",
        "| component | action | bytes before | bytes after | reduction |",
        "|---|---|---:|---:|---:|",
    ]
    for name, record in components.items():
        lines.append(
            f"| `{name}` | {record['action']} | {_bytes(record['bytes_before'])} | {_bytes(record['bytes_after'])} "
            f"| {_percent(record['reduction'])} |"
        )
    other_before = total["bytes_before"] - sum(r["bytes_before"] for r in components.values())
    other_after = total["bytes_after"] - sum(r["bytes_after"] for r in components.values())
    if other_before or other_after:
        lines.append(f"| `model_index.json` | index | {_bytes(other_before)} | {_bytes(other_after)} | – |")
    lines += [
        f"| **total** | | {_bytes(total['bytes_before'])} | {_bytes(total['bytes_after'])} "
        f"| {_percent(total['reduction'])} |",
        "",
        f"The package is {total['ratio']:.1%} of the original's bytes. Sizes are measured from the files on disk "
        "(this card and `quantization_metadata.json` not counted); per-file sizes and sha256 are in "
        "`quantization_metadata.json`.",
    ]
    return lines


def left_out_section(metadata: dict) -> list[str]:
    dropped = {n: r["left_out"] for n, r in metadata["components"].items() if r.get("left_out")}
    if not dropped:
        return []
    lines = ["## Left out", ""]
    for name, what in dropped.items():
        modules = ", ".join(f"`{m}`" for m in what.get("modules", []))
        line = f"- `{name}`: {modules}"
        if what.get("parameters") is not None:
            line += f" ({what['parameters']:,} parameters)"
        if what.get("original_class") and what.get("saved_class"):
            line += f"; saved as `{what['saved_class']}` instead of `{what['original_class']}`"
        if what.get("why"):
            line += f". Why: {what['why']}."
        lines.append(line)
    return lines


def benchmark_section(metadata: dict) -> list[str]:
    lines = ["## Benchmarks", ""]
    if not metadata["benchmarks"]:
        return [*lines, "No benchmark was recorded for this package."]

    for key, report in metadata["benchmarks"].items():
        lines += [
            f"Recorded {report.get('measured_at', 'at an unrecorded date')} (`benchmarks.{key}` in the metadata):",
            "",
            markdown_table(report).rstrip("\n"),
            "",
        ]
    return lines[:-1]


def _loader_class(entry: list) -> tuple[str, str]:
    """(import line, class) of the Auto class that loads a component saved as ``entry`` = [library, class]."""
    library, class_name = entry
    if library == "diffusers":
        return "from diffusers import AutoModel, ErnieImagePipeline", "AutoModel"
    if class_name.endswith("ForCausalLM"):
        return "from transformers import AutoModelForCausalLM", "AutoModelForCausalLM"
    return "from transformers import AutoModel as TransformersAutoModel", "TransformersAutoModel"


def usage_section(metadata: dict, repo_id: str) -> list[str]:
    quantized = [n for n, r in metadata["components"].items() if r["action"] == "quantized"]
    loaders = {name: _loader_class(metadata["components"][name]["class"]) for name in quantized}
    imports = sorted({line for line, _ in loaders.values()} | {"from diffusers import ErnieImagePipeline"})
    if "from diffusers import AutoModel, ErnieImagePipeline" in imports:
        imports.remove("from diffusers import ErnieImagePipeline")
    per_component = [
        f'{name} = {cls}.from_pretrained(repo, subfolder="{name}", dtype=torch.bfloat16, device_map={{"": 0}})'
        for name, (_, cls) in loaders.items()
    ]
    passed = "".join(f"{name}={name}, " for name in quantized)
    return [
        "## Use",
        "",
        "The package is a diffusers folder; the NF4 settings are in each quantized component's `config.json`, so it "
        "loads without a `quantization_config` (needs `bitsandbytes` and a CUDA GPU).",
        "",
        "```python",
        "import torch",
        "from diffusers import ErnieImagePipeline",
        "",
        f'pipe = ErnieImagePipeline.from_pretrained("{repo_id}", dtype=torch.bfloat16, device_map="cuda")',
        'image = pipe("an orange cat on a wooden table", height=1024, width=1024).images[0]',
        "```",
        "",
        "Component by component (to place or swap each model yourself):",
        "",
        "```python",
        "import torch",
        *imports,
        "",
        f'repo = "{repo_id}"',
        *per_component,
        f"pipe = ErnieImagePipeline.from_pretrained(repo, {passed}dtype=torch.bfloat16)",
        'pipe.vae.to("cuda", dtype=torch.bfloat16)',
        "```",
        "",
        "With the ernie-nf4 Gradio app (downloads the package on first use, resumable):",
        "",
        "```bash",
        f"python app.py --repo-id {repo_id}",
        "python app.py --model-dir ./ERNIE-Image-NF4   # a package already on disk",
        "```",
    ]


def model_card(metadata: dict, repo_id: str | None = None) -> str:
    """README.md text for a package described by ``metadata``; ``repo_id`` fills the load snippets
    (``USER/REPO`` when not known yet)."""
    repo_id = repo_id or PLACEHOLDER_REPO
    title = repo_id.split("/")[-1] if repo_id != PLACEHOLDER_REPO else "ERNIE-Image NF4"
    base = hub_id(metadata["source"].get("id"))
    intro = (
        f"4-bit NF4 ([bitsandbytes](https://github.com/bitsandbytes-foundation/bitsandbytes)) package of "
        f"{f'[`{base}`](https://huggingface.co/{base})' if base else 'ERNIE-Image'}, built with ernie-nf4's "
        "`quantize.py`. Every figure below is read from this package's `quantization_metadata.json`."
    )
    sections = [
        source_section(metadata),
        settings_section(metadata),
        size_section(metadata),
        left_out_section(metadata),
        benchmark_section(metadata),
        usage_section(metadata, repo_id),
    ]
    body = "\n\n".join("\n".join(section) for section in sections if section)
    return f"{front_matter(metadata)}\n\n# {title}\n\n{intro}\n\n{body}\n"


def write_model_card(package_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write ``README.md`` into ``package_dir`` from its metadata (atomically); returns its path."""
    package_dir = Path(package_dir)
    text = model_card(read_metadata(package_dir), repo_id=repo_id)
    path = package_dir / CARD_FILE
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    logger.info("model card written to %s", path)
    return path
