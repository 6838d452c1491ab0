"""What an ERNIE-Image NF4 package is: its components, their allowed classes, the NF4 settings, and what this
machine can load or quantize. The loader, the package builder and the service all import it from here.

Component classes are resolved only from the libraries' own names: a ``model_index.json`` entry names a library
and a class; the diffusers components must name the diffusers class an ERNIE-Image pipeline uses, the tokenizers
a transformers tokenizer class, and the text encoder and the prompt enhancer the class that transformers' own auto
mappings give for the ``model_type`` in their ``config.json`` (the whole ``Mistral3Model`` or its language model
alone, e.g. ``MistralModel`` or ``Ministral3Model``; a causal LM for the PE). Nothing named in a package is ever
imported as a module (a package is data, never code).
"""

from __future__ import annotations

from pathlib import Path

from ..compat import diffusers_bnb_guard
from ..errors import PackageError
from .json_file import read_json

PIPELINE_CLASS = "ErnieImagePipeline"
QUANTIZABLE = ("transformer", "text_encoder", "pe")
MODEL_COMPONENTS = QUANTIZABLE  # the three large models; the VAE is small and stays in bf16
# The NF4 settings, in one place: ``bnb_config`` builds each library's config from them, and the package's
# metadata records them as they are.
NF4_SETTINGS = {
    "method": "bitsandbytes",
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
}
_TOKENIZERS = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast", "LlamaTokenizerFast", "AutoTokenizer"})
# component -> {(library, class)} for the components whose class does not follow their config
FIXED_CLASSES: dict[str, frozenset[tuple[str, str]]] = {
    "transformer": frozenset({("diffusers", "ErnieImageTransformer2DModel")}),
    "vae": frozenset({("diffusers", "AutoencoderKLFlux2")}),
    "scheduler": frozenset({("diffusers", "FlowMatchEulerDiscreteScheduler")}),
    "tokenizer": frozenset(("transformers", name) for name in _TOKENIZERS),
    "pe_tokenizer": frozenset(("transformers", name) for name in _TOKENIZERS),
}
TEXT_MODELS = ("text_encoder", "pe")  # their class: what transformers maps their config's model_type to
COMPONENTS = (*FIXED_CLASSES, *TEXT_MODELS)
OPTIONAL_COMPONENTS = frozenset({"pe", "pe_tokenizer"})  # a pipeline without the prompt enhancer still generates
_VISION_LANGUAGE = "mistral3"  # the original text encoder's model_type: a vision-language model, saved whole
REPAIR = "re-download the package, or rebuild it with `python quantize.py --overwrite`"


def components_of(index: dict) -> dict[str, list]:
    """The component entries of a ``model_index.json`` (keys not starting with ``_``), ``None`` ones left out."""
    return {
        name: entry
        for name, entry in index.items()
        if not name.startswith("_") and isinstance(entry, list) and entry and entry[0] is not None
    }


def config_model_type(component_dir: Path) -> str | None:
    """The ``model_type`` in a component's ``config.json`` (None when there is none); deep or huge JSON refused."""
    config = Path(component_dir) / "config.json"
    if not config.is_file():
        return None
    data = read_json(config, REPAIR)
    value = data.get("model_type") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def text_model_class(name: str, model_type: str | None) -> str | None:
    """The transformers class of component ``name`` (``text_encoder`` or ``pe``) for a config of ``model_type``,
    from transformers' auto mappings: the base model for the text encoder (a text decoder's, or the whole
    vision-language ``Mistral3Model``), the causal LM for the PE. None when transformers maps it to nothing fitting."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    if not model_type:
        return None
    if name == "pe":
        return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if model_type == _VISION_LANGUAGE or model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return MODEL_MAPPING_NAMES.get(model_type)
    return None


def allowed_classes(name: str, folder: Path | None) -> frozenset[tuple[str, str]]:
    """The ``(library, class)`` entries component ``name`` of the pipeline in ``folder`` may name."""
    if name in FIXED_CLASSES:
        return FIXED_CLASSES[name]
    if name not in TEXT_MODELS or folder is None:
        return frozenset()
    class_name = text_model_class(name, config_model_type(folder / name))
    return frozenset({("transformers", class_name)}) if class_name else frozenset()


def _check_entry(name: str, entry: list, folder: Path | None, where: str) -> None:
    if name not in COMPONENTS:
        raise PackageError(
            f"{where}: model_index.json has an unknown component {name!r}; an ERNIE-Image pipeline has "
            f"{sorted(COMPONENTS)}"
        )
    if name in TEXT_MODELS and folder is not None and not (folder / name).is_dir():
        raise PackageError(f"{folder / name}: component folder {name!r} is missing; {REPAIR}")
    allowed = allowed_classes(name, folder)
    if len(entry) != 2 or tuple(entry) not in allowed:
        if name in TEXT_MODELS and not allowed:
            detail = f"its {name}/config.json names no model_type transformers maps to a text model"
        else:
            detail = f"allowed: {sorted(list(a) for a in allowed)}"
        raise PackageError(
            f"{where}: model_index.json component {name!r} names {entry!r}, which is not allowed ({detail}); "
            "packages are never run as code"
        )


def check_model_index(index: dict, where: str, folder: Path | None = None) -> dict[str, list]:
    """Check that every component of ``index`` (of the pipeline in ``folder``) is one an ERNIE-Image pipeline has,
    with an allowed class. Returns the components; raises ``PackageError`` naming the entry otherwise."""
    if index.get("_class_name") != PIPELINE_CLASS:
        raise PackageError(
            f"{where}: model_index.json names {index.get('_class_name')!r}, expected {PIPELINE_CLASS!r}; "
            "pass an ERNIE-Image pipeline folder"
        )
    components = components_of(index)
    for name, entry in components.items():
        _check_entry(name, entry, folder, where)
    missing = set(COMPONENTS) - OPTIONAL_COMPONENTS - set(components)
    if missing:
        raise PackageError(f"{where}: model_index.json lacks the components {sorted(missing)}")
    return components


def read_model_index(folder: Path, argument: str) -> tuple[dict, dict[str, list]]:
    """A pipeline folder's ``model_index.json`` and its checked components (``check_model_index``); raises
    ``PackageError`` naming the folder or file when it is missing, not JSON, or not an allowed ERNIE-Image index."""
    folder = Path(folder)
    path = folder / "model_index.json"
    if not path.is_file():
        raise PackageError(f"{argument} {folder}: no model_index.json; pass a diffusers folder of ERNIE-Image")
    index = read_json(path, f"{argument} {folder} is not a sound pipeline folder; {REPAIR}")
    if not isinstance(index, dict):
        raise PackageError(f"{argument} {folder}: model_index.json must hold a JSON object")
    return index, check_model_index(index, f"{argument} {folder}", folder)


def component_class(name: str, entry: list, folder: Path | None = None):
    """The class that allowed ``model_index.json`` entry ``[library, class]`` of component ``name`` names
    (``folder``: the pipeline folder, whose configs decide the text models' classes)."""
    if tuple(entry) not in allowed_classes(name, folder):
        raise PackageError(f"component {name!r}: class {entry!r} is not allowed")
    library, class_name = entry
    if library == "diffusers":
        import diffusers as module
    else:
        import transformers as module
    return getattr(module, class_name)


def bnb_config(library: str):
    """The ``BitsAndBytesConfig`` of ``library`` ("diffusers" or "transformers") with ``NF4_SETTINGS``."""
    import torch

    if library == "diffusers":
        from diffusers import BitsAndBytesConfig
    else:
        from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(
        load_in_4bit=NF4_SETTINGS["load_in_4bit"],
        bnb_4bit_quant_type=NF4_SETTINGS["bnb_4bit_quant_type"],
        bnb_4bit_use_double_quant=NF4_SETTINGS["bnb_4bit_use_double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, NF4_SETTINGS["bnb_4bit_compute_dtype"]),
    )


def quantization_config(component_dir: Path) -> dict | None:
    """The ``quantization_config`` recorded in a component's ``config.json`` (None: not quantized)."""
    config = Path(component_dir) / "config.json"
    if not config.is_file():
        return None
    data = read_json(config, REPAIR)
    value = data.get("quantization_config") if isinstance(data, dict) else None
    return value if isinstance(value, dict) else None


def is_nf4(component_dir: Path) -> bool:
    """Whether the component was saved quantized with bitsandbytes 4-bit (NF4 or FP4)."""
    config = quantization_config(component_dir)
    return bool(config) and (config.get("load_in_4bit") or config.get("quant_method") == "bitsandbytes")


def diffusers_nf4_blocker() -> str | None:
    """Why diffusers refuses to load or quantize an NF4 transformer here (its own environment check), or None."""
    quantizer = diffusers_bnb_guard()
    try:
        quantizer(bnb_config("diffusers")).validate_environment()
    except (RuntimeError, ImportError) as err:
        return str(err)
    return None


def quantizable_here() -> tuple[str, ...]:
    """The components this machine can quantize: all three with a GPU, text_encoder and pe without one
    (diffusers' bitsandbytes path needs a GPU for the transformer; transformers' runs on the CPU)."""
    return QUANTIZABLE if diffusers_nf4_blocker() is None else ("text_encoder", "pe")
