"""Reading a LoRA file for the ERNIE-Image transformer: the key layouts diffusers' ``ErnieImageLoraLoaderMixin``
reads, checked against the model before anything is applied.

Layouts (told apart by the keys' prefix; the rest of a key is the module's path in diffusers'
``ErnieImageTransformer2DModel``, like ``layers.0.self_attention.to_q``):

- PEFT: ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight``;
- AI-Toolkit and other trainers: ``diffusion_model.<module>.lora_A.weight`` / ``.lora_B.weight``;
- diffusers: ``transformer.<module>.lora_A.weight`` / ``.lora_B.weight``.

The update is ``B @ A * alpha / rank``, with alpha as diffusers and PEFT read it: a module's ``<module>.alpha`` (a
scalar) when the file has one; else the PEFT settings diffusers stores in the file's metadata
(``lora_adapter_metadata``: ``lora_alpha``, default 8, ``alpha_pattern``, and ``use_rslora``, which divides by the
rank's square root instead); else the module's own rank (the update as trained, ``B @ A``).

LoRA files are data: only safetensors are read (no pickle), the header is checked against the file's length, every
key must be one of the above, every tensor a finite float of the shape its module needs. Anything else is refused
with ``InvalidArgument`` naming the file and the key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument, PackageError
from ..package.safetensors_header import read_safetensors_header

LAYOUTS = {"base_model.model.": "PEFT", "diffusion_model.": "AI-Toolkit", "transformer.": "diffusers"}
MAX_RANK = 1024
MAX_VALUE = 65504.0  # float16's largest: a LoRA weight beyond it is broken (and would overflow the layer's output)
_KEY = re.compile(r"(?P<module>.+)\.(?:(?P<part>lora_A|lora_B)\.weight|(?P<alpha>alpha))")
_FLOAT_DTYPES = {"F16", "BF16", "F32"}
METADATA_KEY = "lora_adapter_metadata"  # where diffusers keeps the PEFT settings


@dataclass(frozen=True)
class LoraModule:
    """One module's update ``up @ down`` (already multiplied by alpha / rank)."""

    down: object  # torch.Tensor [rank, in_features]
    up: object  # torch.Tensor [out_features, rank]

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class LoraFile:
    """A LoRA read from ``path``: ``modules`` maps each module path of the transformer to its update."""

    name: str
    path: Path
    layout: str
    modules: dict[str, LoraModule]

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.modules.values())


def _refuse(name: str, path: Path, why: str) -> InvalidArgument:
    return InvalidArgument(f"lora {name!r} ({path}): {why}", field="lora")


def _layout(name: str, path: Path, keys: list[str]) -> tuple[str, str]:
    """(layout, prefix) of ``keys``, which must all share one of ``LAYOUTS``' prefixes."""
    for prefix, layout in LAYOUTS.items():
        if all(key.startswith(prefix) for key in keys):
            return layout, prefix
    odd = next(key for key in keys if not key.startswith(tuple(LAYOUTS)))
    shown = odd if odd != next(iter(keys)) or len(keys) == 1 else keys[0]
    raise _refuse(
        name,
        path,
        f"key {shown!r} is not in a LoRA layout for ERNIE-Image (keys start with one of {', '.join(LAYOUTS)} and end "
        "in lora_A.weight / lora_B.weight); is this a LoRA for another model?",
    )


def _group(name: str, path: Path, header: dict, prefix: str) -> dict[str, dict[str, str]]:
    """module -> {"lora_A": key, "lora_B": key, "alpha": key} from the header's keys."""
    modules: dict[str, dict[str, str]] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if "dora_scale" in key:
            raise _refuse(name, path, f"key {key!r}: a DoRA file; DoRA is not supported, only plain LoRA")
        match = _KEY.fullmatch(key[len(prefix) :])
        if match is None:
            raise _refuse(name, path, f"key {key!r} is not a LoRA weight (lora_A.weight, lora_B.weight or alpha)")
        if entry["dtype"] not in _FLOAT_DTYPES:
            raise _refuse(name, path, f"key {key!r} is {entry['dtype']}; LoRA weights are F16, BF16 or F32")
        part = match["part"] or "alpha"
        modules.setdefault(match["module"], {})[part] = key
    for module, parts in modules.items():
        if "lora_A" not in parts or "lora_B" not in parts:
            missing = "lora_B" if "lora_A" in parts else "lora_A"
            raise _refuse(name, path, f"module {module!r} has no {missing}.weight")
    return modules


def _shape_check(name: str, path: Path, header: dict, module: str, parts: dict, target: tuple[int, int]) -> int:
    """The module's rank, after checking A [rank, in] and B [out, rank] against ``target`` (in, out)."""
    a, b = (header[parts[p]]["shape"] for p in ("lora_A", "lora_B"))
    in_features, out_features = target
    if not all(type(d) is int for d in (*a, *b)):
        raise _refuse(name, path, f"module {module!r}: its shapes {a} and {b} are not whole numbers; damaged")
    if len(a) != 2 or len(b) != 2 or a[1] != in_features or b[0] != out_features or a[0] != b[1]:
        raise _refuse(
            name,
            path,
            f"module {module!r}: lora_A {a} and lora_B {b} do not fit its {in_features} inputs and {out_features} "
            f"outputs (lora_A is [rank, {in_features}], lora_B [{out_features}, rank]); this LoRA was made for "
            "another model",
        )
    if not 1 <= a[0] <= MAX_RANK:
        raise _refuse(name, path, f"module {module!r}: rank {a[0]} is outside [1, {MAX_RANK}]")
    if "alpha" in parts and header[parts["alpha"]]["shape"] not in ([], [1]):
        raise _refuse(name, path, f"key {parts['alpha']!r} must hold one number")
    return a[0]


def _settings(name: str, path: Path, header: dict) -> dict:
    """The PEFT settings diffusers writes in the file's metadata (empty when there are none): a pipeline's
    ``save_lora_weights`` prefixes them with ``transformer.``, a model's ``save_lora_adapter`` does not."""
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _refuse(name, path, "its metadata is not a map of texts; the file is damaged")
    text = metadata.get(METADATA_KEY)
    if text is None:
        return {}
    if len(text) > 1 << 20:
        raise _refuse(name, path, f"metadata {METADATA_KEY!r} is over 1 MiB")
    try:
        settings = json.loads(text)
    except (json.JSONDecodeError, RecursionError, TypeError):
        raise _refuse(name, path, f"metadata {METADATA_KEY!r} is not valid JSON") from None
    if not isinstance(settings, dict):
        raise _refuse(name, path, f"metadata {METADATA_KEY!r} is not a map of PEFT settings")
    prefixed = {k.removeprefix("transformer."): v for k, v in settings.items() if k.startswith("transformer.")}
    settings = prefixed or settings
    if settings.get("use_dora"):
        raise _refuse(name, path, "a DoRA file (use_dora); DoRA is not supported, only plain LoRA")
    return settings


def _pattern_value(patterns, module: str):
    """PEFT's pattern lookup, without running the file's text as a regular expression: a key anchored with ``^``
    (as diffusers saves them) matches the module path itself, any other key also a path ending in ``.key``."""
    if isinstance(patterns, dict):
        for key, value in patterns.items():
            if not isinstance(key, str):
                continue
            plain = key.removeprefix("^").removesuffix("$").replace("\\.", ".")
            if module == plain or (not key.startswith("^") and module.endswith("." + plain)):
                return value
    return None


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _scaling(settings: dict, module: str, rank: int, loaded_alpha) -> float:
    """What the module's ``B @ A`` is multiplied by (see the module docstring)."""
    if loaded_alpha is not None:
        return float(loaded_alpha.float().reshape(-1)[0]) / rank
    if not settings:
        return 1.0
    alpha = _number(_pattern_value(settings.get("alpha_pattern"), module))
    alpha = alpha if alpha is not None else _number(settings.get("lora_alpha", 8))
    alpha = 8.0 if alpha is None else alpha
    return alpha / (rank**0.5 if settings.get("use_rslora") else rank)


def _header(name: str, path: Path) -> tuple[int, dict]:
    if path.suffix != ".safetensors":
        raise _refuse(name, path, "not a .safetensors file; only safetensors LoRA files are read")
    try:
        raw, header = read_safetensors_header(path)
    except PackageError as err:
        raise _refuse(name, path, f"not a readable safetensors file ({str(err).split(';')[0]})") from None
    except OSError as err:
        raise _refuse(name, path, f"cannot be read ({err.strerror or err})") from None
    if len(header) - ("__metadata__" in header) == 0:
        raise _refuse(name, path, "holds no tensors")
    return len(raw), header


def _header_and_layout(name: str, path: Path) -> tuple[dict, tuple[str, str]]:
    _, header = _header(name, path)
    return header, _layout(name, path, [key for key in header if key != "__metadata__"])


def check_lora_file(name: str, path: str | Path) -> None:
    """Refuse (``InvalidArgument`` naming the LoRA) a file that is no LoRA at all: not safetensors, empty, or keys
    in no LoRA layout. Reads its header only: what a model's layers decide is checked by ``read_lora``."""
    _header_and_layout(name, Path(path))


def read_lora(name: str, path: str | Path, linears: dict[str, tuple[int, int]], device="cpu") -> LoraFile:
    """Read the LoRA at ``path`` for a transformer whose linear layers are ``linears`` (module path -> (in, out):
    ``linear_shapes``). Every module the file names must be one of them, with matching shapes; the tensors are
    loaded (on ``device``), checked finite and returned with alpha / rank folded into ``up``."""
    from safetensors import safe_open

    path = Path(path)
    header, (layout, prefix) = _header_and_layout(name, path)
    grouped = _group(name, path, header, prefix)
    ranks = {}
    for module, parts in grouped.items():
        if module not in linears:
            raise _refuse(name, path, f"module {module!r} is not a linear layer of the ERNIE-Image transformer")
        ranks[module] = _shape_check(name, path, header, module, parts, linears[module])
    settings = _settings(name, path, header)
    modules = {}
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            for module, parts in grouped.items():
                tensors = {part: handle.get_tensor(key) for part, key in parts.items()}
                scaling = _scaling(settings, module, ranks[module], tensors.get("alpha"))
                down, up = tensors["lora_A"].float(), tensors["lora_B"].float() * scaling
                for part, tensor in (("lora_A", down), ("lora_B", up)):
                    _check_values(name, path, parts[part], tensor)
                modules[module] = LoraModule(down=down.to(device), up=up.to(device))
    except (OSError, RuntimeError, ValueError) as err:  # safetensors' own refusals of a damaged file
        if isinstance(err, InvalidArgument):
            raise
        raise _refuse(name, path, f"cannot be read as safetensors ({type(err).__name__}: {err})") from None
    return LoraFile(name, path, layout, modules)


def _check_values(name: str, path: Path, key: str, tensor) -> None:
    """Finite, and within float16's range once alpha is folded in (else every image would come out black)."""
    import torch

    if not bool(torch.isfinite(tensor).all()):
        raise _refuse(name, path, f"key {key!r} holds NaN or infinite values")
    if tensor.numel() and float(tensor.abs().max()) > MAX_VALUE:
        raise _refuse(name, path, f"key {key!r} holds values beyond {MAX_VALUE:g} (with its alpha); broken weights")


def linear_shapes(transformer) -> dict[str, tuple[int, int]]:
    """Module path -> (in_features, out_features) of every linear layer of ``transformer`` (NF4 ones included)."""
    import torch

    return {
        name: (module.in_features, module.out_features)
        for name, module in transformer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
