"""The one place an ``ErnieImagePipeline`` is built, from an NF4 package, a foreign NF4 folder or a bf16 original.

``load_pipeline`` returns a ``LoadedPipeline``: the diffusers pipeline plus what this project decided about it
(device, memory mode, the ``Residency`` that moves models in low-vram mode, whether it is compiled, what the
package check found). State lives here, never in attributes planted on diffusers objects. What the fast path
changes of them: the transformer's and its blocks' classes (``fast_transformer.enable_fast_path``, through
``compat.swap_class``), and through public API the VAE's tiling settings and the text encoder's token table
(``memory_savers``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from ..compat import fast_path_supported, keep_nf4_layout
from ..errors import EnvironmentUnsupported, InvalidArgument, PackageError
from ..package.check import PackageCheck, check_package
from ..package.format import MODEL_COMPONENTS, REPAIR, component_class, diffusers_nf4_blocker, is_nf4
from ..package.preview_map import PREVIEW_FILE, fit_preview_map, read_preview_map
from ..package.read_ahead import read_ahead
from ..request import LoraChoice
from ..system import resolve_device
from ..torch_state import torch_state_kept
from .lora_files import linear_shapes, read_lora
from .memory_modes import NEEDS_GIB, MemoryMode, choose_memory_mode, usable_gib, use_expandable_segments

logger = logging.getLogger(__name__)


@dataclass
class LoadedPipeline:
    """A loaded pipeline and how it runs. ``use(name)`` puts model ``name`` on the GPU when it takes turns."""

    pipe: object  # diffusers ErnieImagePipeline
    device: str
    memory_mode: MemoryMode
    memory_mode_reason: str
    fast: bool
    compiled: bool
    package: PackageCheck
    residency: object | None = None  # residency.Residency in low-vram mode
    loras: object | None = None  # lora.LoraSlots when LoRAs were attached
    # auto's figures, when it chose: GiB usable on the GPU, and what all-on-gpu needed (LoRAs included)
    usable_gib: float | None = None
    all_on_gpu_needs_gib: float | None = None
    previews: object | None = None  # package.preview_map.PreviewMap: the package's, else fitted on first use
    compute: str = "bf16"  # how the transformer's linear layers multiply (compute.Compute's value)

    def preview_map(self):
        """The live previews' ``PreviewMap``: the package's ``preview_map.safetensors``, read at load; for a package
        without one (older, or written by other tools) fitted once from its VAE on first use (seconds) and kept in
        memory."""
        if self.previews is None:
            logger.info("fitting the live previews' map from the VAE (the package has no %s)", PREVIEW_FILE)
            self.previews = fit_preview_map(self.pipe.vae)
        return self.previews

    def use(self, name: str) -> None:
        if self.residency is not None and name in self.residency.names:
            self.residency.use(name)

    @property
    def lora_names(self) -> list[str]:
        return [] if self.loras is None else self.loras.names

    def check_loras(self, choices) -> None:
        """Raise ``InvalidArgument`` (``field="lora"``) naming a LoRA of ``choices`` that is not attached."""
        from .lora import unknown_lora

        for choice in choices:
            if choice.name not in self.lora_names:
                raise unknown_lora(choice.name, self.lora_names)

    def select_loras(self, choices) -> None:
        """Put ``choices`` (``LoraChoice``s) in force for the next transformer call; call it after
        ``use("transformer")``: in low-vram mode the scales travel with the model."""
        self.check_loras(choices)
        if self.loras is not None:
            self.loras.select(choices)

    @property
    def seconds_moving(self) -> float | None:
        """Seconds spent moving models onto the GPU (low-vram; their copies' GPU time: ``Residency.seconds_moving``,
        which waits for moves still queued), else None."""
        return None if self.residency is None else self.residency.seconds_moving

    @property
    def has_pe(self) -> bool:
        return getattr(self.pipe, "pe", None) is not None and getattr(self.pipe, "pe_tokenizer", None) is not None


class _TextModelTypeFilter(logging.Filter):
    """diffusers warns that the text encoder is not a ``Mistral3Model``; a package's is that model's language
    model alone (quantize.py leaves out the vision tower), which the pipeline runs exactly the same way."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Expected types for text_encoder")


@contextlib.contextmanager
def _quiet_text_encoder_type_warning():
    target = logging.getLogger("diffusers.pipelines.pipeline_utils")
    quiet = _TextModelTypeFilter()
    target.addFilter(quiet)
    try:
        yield
    finally:
        target.removeFilter(quiet)


def _check_arguments(model_dir: Path, device: str, mode: MemoryMode, fast: bool, compile: bool) -> None:
    if mode.needs_cuda and not device.startswith("cuda"):
        raise EnvironmentUnsupported(
            f"memory_mode {mode.value!r} needs a CUDA GPU (device is {device}); use memory_mode 'all-on-gpu' there"
        )
    if compile and not fast:
        raise InvalidArgument("compile needs fast=True (it compiles the fast path's blocks)")


# What the libraries raise when a component's files do not make a model (a config edited, weights that do not fit
# it): the package's fault, named as such. Out of memory and device errors are not among them.
_PACKAGE_FAULTS = (
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    NotImplementedError,
    RecursionError,
    ArithmeticError,
)


def load_component(model_dir: Path, name: str, entry: list, **kwargs):
    """Component ``name`` of the package at ``model_dir``, from its allowed class's ``from_pretrained``; a failure
    that comes from its files raises ``PackageError`` naming its folder."""
    cls = component_class(name, entry, model_dir)
    try:
        with torch_state_kept():
            component = cls.from_pretrained(model_dir / name, **kwargs)
    except _PACKAGE_FAULTS + (OSError,) as err:
        if isinstance(err, PackageError):
            raise
        detail = " ".join(str(err).split())[:300]
        raise PackageError(
            f"{model_dir / name}: the {name} cannot be built from its files ({type(err).__name__}: {detail}); its "
            f"config and weights are damaged or do not fit each other; {REPAIR}"
        ) from err
    if callable(getattr(component, "modules", None)):  # a model, not a tokenizer or scheduler
        _refuse_missing_weights(model_dir, name, component)
        keep_nf4_layout(component)
    return component


def _refuse_missing_weights(model_dir: Path, name: str, model) -> None:
    """``PackageError`` when the weights files left some of the model's tensors unset (diffusers leaves them on
    the meta device, to fail later at the first move): files of another model, or with tensors missing."""
    empty = [key for key, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if empty:
        raise PackageError(
            f"{model_dir / name}: the {name}'s weights files lack {len(empty)} of its tensors (such as {empty[0]!r}); "
            f"they are damaged or belong to another model; {REPAIR}"
        )


def check_transformer_loadable(model_dir: Path, argument: str = "model_dir") -> None:
    """Raise ``EnvironmentUnsupported`` when the package's transformer is NF4 and diffusers refuses to load NF4 here."""
    if is_nf4(model_dir / "transformer") and (blocker := diffusers_nf4_blocker()) is not None:
        raise EnvironmentUnsupported(
            f"{argument} {model_dir}: its transformer is NF4, which diffusers loads only on a CUDA GPU ({blocker}); "
            "run on a machine with an NVIDIA GPU, or use a package whose transformer is bf16"
        )


def _load_small(model_dir: Path, components: dict, vae_dtype) -> dict:
    """The VAE, the scheduler and the tokenizers, each from its own folder."""
    small = {}
    for name in ("vae", "scheduler", "tokenizer", "pe_tokenizer"):
        if name in components:
            kwargs = {"dtype": vae_dtype, "use_safetensors": True} if name == "vae" else {}
            small[name] = load_component(model_dir, name, components[name], **kwargs)
    return small


def read_loras(model_dir: Path, loras) -> tuple[list, dict]:
    """``loras`` ((name, file) pairs, names as a request gives them, each once) read and checked against the
    package's transformer before it loads (its linear layers' shapes come from its config on the meta device), and
    the GPU GiB they will take beside it in each memory mode (``lora.planned_bytes``; low-vram streams them)."""
    if not loras:
        return [], {}
    import torch
    from diffusers import ErnieImageTransformer2DModel

    from .lora import planned_bytes

    names = [LoraChoice(name).name for name, _ in loras]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise InvalidArgument(f"loras: each name once, got {twice[0]!r} twice", field="lora")
    config = ErnieImageTransformer2DModel.load_config(model_dir / "transformer")
    config.pop("quantization_config", None)
    with torch.device("meta"):
        linears = linear_shapes(ErnieImageTransformer2DModel.from_config(config))
    files = [read_lora(name, path, linears) for name, path in loras]
    modes = {MemoryMode.ALL_ON_GPU: False, MemoryMode.LOW_VRAM: True}
    return files, {mode: planned_bytes(files, linears, streamed=s) / 2**30 for mode, s in modes.items()}


def _load_models(
    model_dir: Path, components: dict, device: str, mode: MemoryMode, fast: bool, residency, lora_files=(), compute=None
) -> tuple[dict, object]:
    """The three big models, one at a time: NF4 ones straight onto the GPU (bitsandbytes places them), bf16 ones
    where the memory mode wants them; in low-vram mode each goes to page-locked CPU memory before the next loads.
    The transformer's linear layers get ``compute`` (``compute.apply_compute``), then ``lora_files`` are attached to
    it (their ``LoraSlots`` come back, or None)."""
    import torch

    from .compute import Compute, apply_compute
    from .lora import attach_loras
    from .memory_savers import embeddings_on_cpu

    quantized = [name for name in MODEL_COMPONENTS if name in components and is_nf4(model_dir / name)]
    if "transformer" in quantized:
        check_transformer_loadable(model_dir)
    place = device if mode is MemoryMode.ALL_ON_GPU else "cpu"
    models, slots = {}, None
    for name in MODEL_COMPONENTS:
        if name not in components:
            continue
        target = device if name in quantized else place
        logger.info("loading %s (%s) on %s", name, "NF4" if name in quantized else "bf16", target)
        models[name] = load_component(
            model_dir, name, components[name], dtype=torch.bfloat16, device_map={"": target}, use_safetensors=True
        )
        if fast and name == "text_encoder":
            embeddings_on_cpu(models[name])
        if name == "transformer" and compute not in (None, Compute.BF16):
            apply_compute(models[name], compute)  # on the device it computes on, before LoRAs wrap its layers
        if name == "transformer" and lora_files:
            # before residency: the slots move with the model (in low-vram the weights stay in CPU memory)
            slots = attach_loras(models[name], lora_files, streamed=residency is not None)
        if residency is not None:
            residency.add(name, models[name])
    return models, slots


def _speed_up(loaded: LoadedPipeline) -> None:
    """The fast path (packed-token transformer forward, tiled VAE) and, with ``compile``, compiled blocks."""
    from .fast_transformer import compile_blocks, enable_fast_path
    from .memory_savers import tile_vae

    pipe = loaded.pipe
    tile_vae(pipe.vae)
    if not fast_path_supported():
        loaded.fast = loaded.compiled = False
        return
    enable_fast_path(pipe.transformer)
    if loaded.compiled:
        compile_blocks(pipe.transformer)


def _decide_mode(mode: MemoryMode, device: str, extra_gib: dict) -> tuple:
    """(mode, why, GiB usable, GiB all-on-gpu needs): ``auto`` measured and decided here (``extra_gib``: per mode,
    the LoRAs beside the transformer); a mode asked for is kept, with no figures."""
    if mode is not MemoryMode.AUTO:
        return mode, f"memory_mode {mode.value}, as asked", None, None
    usable = needs = None
    if device.startswith("cuda"):
        usable = usable_gib(device)
        needs = NEEDS_GIB[MemoryMode.ALL_ON_GPU] + extra_gib.get(MemoryMode.ALL_ON_GPU, 0.0)
    mode, reason = choose_memory_mode(device, usable, extra_gib=extra_gib)
    logger.info("%s", reason)
    return mode, reason, usable, needs


def _decide_compute(compute, device: str, mode: MemoryMode, compiling: bool | None):
    """``compute`` resolved for the device (a mode the card lacks refused before anything loads); ``auto`` counts
    the blocks as compiled when ``compiling`` is True, or None (the app's default) on a CUDA GPU."""
    from .compute import resolve

    if compiling is None:
        compiling = device.startswith("cuda") and mode is not MemoryMode.MODEL_OFFLOAD
    return resolve(compute, device, compiled=bool(compiling) and fast_path_supported())


def _assemble(model_dir: Path, components: dict, models: dict, device: str, mode: MemoryMode):
    """The diffusers pipeline of the loaded ``models`` and the small components, placed for ``mode``."""
    import torch
    from diffusers import ErnieImagePipeline

    # bf16 convolutions are tens of times slower than float32 on CPUs without bf16 instructions; the VAE is small
    vae_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    models.update(_load_small(model_dir, components, vae_dtype))
    with _quiet_text_encoder_type_warning(), torch_state_kept():
        pipe = ErnieImagePipeline.from_pretrained(model_dir, **models, use_safetensors=True)
    if mode is MemoryMode.MODEL_OFFLOAD:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.vae.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(
    model_dir: str | Path,
    device: str | None = None,
    memory_mode: str | MemoryMode = MemoryMode.ALL_ON_GPU,
    verify_sha256: bool = False,
    fast: bool = True,
    compile: bool = False,
    loras=(),
    compute="bf16",
    compile_after_load: bool | None = False,
) -> LoadedPipeline:
    """Load an ERNIE-Image pipeline (NF4 package, any diffusers ERNIE-Image folder, or bf16 original).

    ``memory_mode``: see ``MemoryMode``. ``fast`` runs the transformer with ``fast_transformer``'s forward
    (flash attention without a padding mask, same outputs) and applies ``memory_savers`` (text encoder's token
    table in CPU memory, tiled VAE decode above 768 px); ``fast=False`` is diffusers' stock execution, the
    benchmark's baseline. ``compile`` adds regional ``torch.compile`` of the transformer's blocks, compiled at the end
    of the first call (``fast_transformer.compile_blocks``); off by default here: the app's ``ImageService`` compiles in
    the background on a CUDA GPU instead, while its first requests run eagerly.
    The folder is checked first (``package.check``): allowed classes only, configs within bounds, every safetensors
    header against its file, a sample of every floating tensor finite; packages this project wrote also against
    their metadata (sizes, small files' sha256, and the weights' with ``verify_sha256``). A damaged folder, or
    a component the libraries cannot build from its files, raises ``PackageError`` naming the file or folder and
    the fix. Only safetensors are read.
    ``loras``: (name, file) pairs of LoRA files (``lora_files``), read and checked before the models load and
    attached to the transformer at scale 0; each request picks and scales them (``LoadedPipeline.select_loras``).
    ``compute``: how the transformer's linear layers multiply (``compute.Compute``: bf16, fp8, int8 or auto, the
    fastest the device has for compiled blocks, bf16 where they run eagerly); the weights stay NF4 either way.
    ``compile_after_load``: whether the caller compiles the blocks once this returns (the app's ``compile`` setting:
    None for on a CUDA GPU), which ``auto`` counts as compiled.
    The weight files are read into the file cache in the background from the start (``package.read_ahead``), so
    that after a machine starts the models load from memory rather than piece by piece from the disk.
    """
    from .residency import Residency

    mode = MemoryMode.parse(memory_mode)
    model_dir = Path(model_dir)
    with read_ahead(model_dir):  # while the libraries import and the check runs; stopped once loaded
        package = check_package(model_dir, verify_sha256=verify_sha256, argument="model_dir")
        device = resolve_device(device)
        previews = read_preview_map(model_dir)  # checked before the models load, as the package's other files
        lora_files, lora_gib = read_loras(model_dir, loras)
        mode, reason, usable, needs = _decide_mode(mode, device, lora_gib)
        _check_arguments(model_dir, device, mode, fast, compile)
        compute = _decide_compute(compute, device, mode, (compile or compile_after_load) if fast else False)
        if device.startswith("cuda"):
            use_expandable_segments()
        residency = Residency(device) if mode is MemoryMode.LOW_VRAM else None
        models, slots = _load_models(model_dir, package.components, device, mode, fast, residency, lora_files, compute)
        pipe = _assemble(model_dir, package.components, models, device, mode)
    loaded = LoadedPipeline(
        pipe, device, mode, reason, fast=fast, compiled=compile, package=package, residency=residency, loras=slots
    )
    loaded.usable_gib, loaded.all_on_gpu_needs_gib = usable, needs
    loaded.previews, loaded.compute = previews, compute.value
    if fast:
        _speed_up(loaded)
    return loaded
