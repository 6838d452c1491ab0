"""The private parts of upstream libraries this project touches, each checked before use.

Every such access to diffusers, transformers, bitsandbytes and torch goes through this module. Gradio's queue and
events are the exception: ``gradio_queue`` here finds the queue and checks the attributes read of it, and two web app
modules read the rest where they act on it: ``webapp/limits.py`` (the event a request names: its function and
inputs) and ``webapp/runs.py`` (a job's ``alive`` and ``session_hash``; dropping a session's queued events).

Tested ranges are pinned in requirements.txt / pyproject.toml. Should a new release rename or remove one of
these, the check logs one warning naming it and the code falls back to a public or own path (slower, never
wrong) instead of failing in the middle of a request. ``upstream_problems()`` lists what is missing (the tests
assert it is empty for the pinned versions).
"""

from __future__ import annotations

import functools
import getpass
import inspect
import logging
import os
import tempfile
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# What the fast transformer path (runtime/fast_transformer.py) reads of diffusers 0.42.1's ErnieImage model and block.
_TRANSFORMER_ATTRS = (
    "x_embedder",
    "text_proj",
    "time_proj",
    "time_embedding",
    "adaLN_modulation",
    "layers",
    "final_norm",
    "final_linear",
    "pos_embed",
    "patch_size",
    "out_channels",
)
_BLOCK_ATTRS = ("self_attention", "adaLN_sa_ln", "adaLN_mlp_ln", "mlp")
_FORWARD_ARGS = ("hidden_states", "timestep", "text_bth", "text_lens")


@functools.cache
def _warn_once(what: str, fallback: str) -> None:
    logger.warning("upstream changed: %s is gone; %s", what, fallback)


def unpatchify_latents(pipe, latents):
    """[B, 128, H/2, W/2] -> [B, 32, H, W], as ``ErnieImagePipeline._unpatchify_latents`` (diffusers 0.42.1)."""
    own = getattr(type(pipe), "_unpatchify_latents", None)
    if own is not None:
        return own(latents)
    _warn_once("ErnieImagePipeline._unpatchify_latents", "using this project's copy")
    # Copied from diffusers 0.42.1 pipelines/ernie_image/pipeline_ernie_image.py (_unpatchify_latents)
    b, c, h, w = latents.shape
    latents = latents.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return latents.reshape(b, c // 4, h * 2, w * 2)


def patchify_latents(pipe, latents):
    """[B, 32, H, W] -> [B, 128, H/2, W/2], as ``ErnieImagePipeline._patchify_latents`` (diffusers 0.42.1)."""
    own = getattr(type(pipe), "_patchify_latents", None)
    if own is not None:
        return own(latents)
    _warn_once("ErnieImagePipeline._patchify_latents", "using this project's copy")
    # Copied from diffusers 0.42.1 pipelines/ernie_image/pipeline_ernie_image.py (_patchify_latents)
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return latents.reshape(b, c * 4, h // 2, w // 2)


def pad_text(pipe, text_hiddens, device, dtype):
    """Pad per-prompt embeddings to ``[B, T, D]`` plus lengths, as ``ErnieImagePipeline._pad_text`` does."""
    import torch

    dim = pipe.transformer.config.text_in_dim
    own = getattr(type(pipe), "_pad_text", None)
    if own is not None:
        return own(text_hiddens, device, dtype, dim)
    _warn_once("ErnieImagePipeline._pad_text", "using this project's copy")
    # Copied from diffusers 0.42.1 pipelines/ernie_image/pipeline_ernie_image.py (_pad_text)
    rows = [t.squeeze(1).to(device, dtype) if t.dim() == 3 else t.to(device, dtype) for t in text_hiddens]
    lens = torch.tensor([t.shape[0] for t in rows], device=device, dtype=torch.long)
    out = torch.zeros((len(rows), int(lens.max()) if rows else 0, dim), device=device, dtype=dtype)
    for i, t in enumerate(rows):
        out[i, : t.shape[0]] = t
    return out, lens


def fast_path_problem() -> str | None:
    """Why ``fast_transformer`` cannot run on this diffusers (it subclasses the model and reads these attributes),
    or None. Checked on the classes, so it needs no model."""
    try:
        from diffusers.models.transformers import transformer_ernie_image as module
    except ImportError as err:
        return f"diffusers has no ErnieImage transformer module ({err})"
    for class_name in ("ErnieImageTransformer2DModel", "ErnieImageSharedAdaLNBlock"):
        if not hasattr(module, class_name):
            return f"diffusers lacks {class_name}"
    params = inspect.signature(module.ErnieImageTransformer2DModel.forward).parameters
    if not all(name in params for name in _FORWARD_ARGS):
        return f"ErnieImageTransformer2DModel.forward no longer takes {_FORWARD_ARGS}"
    source = inspect.getsource(module.ErnieImageTransformer2DModel.__init__)
    missing = [a for a in _TRANSFORMER_ATTRS if f"self.{a}" not in source and a not in ("patch_size", "out_channels")]
    source = inspect.getsource(module.ErnieImageSharedAdaLNBlock.__init__)
    missing += [a for a in _BLOCK_ATTRS if f"self.{a}" not in source]
    return f"ErnieImage transformer lacks {missing}" if missing else None


def fast_path_supported() -> bool:
    """True when the fast path can run; otherwise one warning and the stock forward is used."""
    problem = _cached_fast_path_problem()
    if problem is not None:
        _warn_once("the ErnieImage internals the fast path reads", f"running diffusers' stock forward ({problem})")
    return problem is None


@functools.cache
def _cached_fast_path_problem() -> str | None:
    return fast_path_problem()


def swap_class(obj, cls: type) -> None:
    """Make ``obj`` (a diffusers model or block) an instance of ``cls``, where one of the two classes subclasses the
    other: the fast path (``runtime.fast_transformer``) runs diffusers' ErnieImage model and blocks with its own
    subclasses' forward this way, and swaps back. Weights, config, hooks and quantization stay as they are. Checked:
    ``TypeError`` when the classes are not parent and child, or when either declares ``__slots__`` (a layout the
    swap would break)."""
    current = type(obj)
    if not (issubclass(cls, current) or issubclass(current, cls)):
        raise TypeError(f"cannot turn a {current.__name__} into a {cls.__name__}: neither subclasses the other")
    if "__slots__" in vars(cls) or "__slots__" in vars(current):
        raise TypeError(f"cannot swap {current.__name__} and {cls.__name__}: one declares __slots__")
    obj.__class__ = cls


# What the app's run control and limits read of Gradio 6.31's queue (gradio/queueing.py), none of it public API.
_GRADIO_QUEUE_ATTRS = (
    "active_jobs",
    "event_queue_per_concurrency_id",
    "event_ids_to_events",
    "delete_lock",
    "max_size",
)


def gradio_queue(app):
    """Gradio's queue behind a running app (``Blocks._queue``), or None with one warning when this Gradio's queue
    lacks what the app reads: then closed tabs, Stop on queued jobs and the per-client limit go unnoticed."""
    try:
        queue = app.get_blocks()._queue
    except (AttributeError, KeyError, RuntimeError):
        queue = None
    if queue is not None and all(hasattr(queue, name) for name in _GRADIO_QUEUE_ATTRS):
        return queue
    _warn_once("Gradio's queue attributes " + ", ".join(_GRADIO_QUEUE_ATTRS), "run control and job limits are off")
    return None


def set_allocator_settings(settings: str) -> bool:
    """The CUDA allocator's settings: ``torch._C._accelerator_setAllocatorSettings`` (torch 2.9+; the older
    ``torch.cuda.memory._set_allocator_settings`` warns that it is deprecated there), else the older one; False
    when neither is there."""
    import torch

    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or getattr(
        torch.cuda.memory, "_set_allocator_settings", None
    )
    if setter is None:
        _warn_once("torch.cuda.memory._set_allocator_settings", "set PYTORCH_CUDA_ALLOC_CONF yourself")
        return False
    setter(settings)
    return True


def run_compiled_only(fn):
    """``fn`` running only the code dynamo already compiled for it: ``torch._dynamo.run`` (in torch since 2.0) looks
    the compiled graphs up and runs a call none of them covers eagerly, instead of compiling on the caller's time.
    Without it, one warning and ``torch.compile(fn, dynamic=True)``, which may compile again during a run."""
    import torch

    run = getattr(torch._dynamo, "run", None)
    if run is None:
        _warn_once("torch._dynamo.run", "a call the compiled blocks do not cover compiles again during its run")
        return torch.compile(fn, dynamic=True)
    return run(fn)


def inductor_default_cache_dir() -> str:
    """The folder Inductor caches in when ``TORCHINDUCTOR_CACHE_DIR`` is not set, which torch writes into that
    variable the first time it reads it (``torch._inductor.runtime.cache_dir_utils.default_cache_dir``). Without it,
    one warning and the folder it has been in every release: ``torchinductor_<user>`` in the temporary directory."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return default_cache_dir()
    except (ImportError, AttributeError):
        _warn_once("torch._inductor.runtime.cache_dir_utils.default_cache_dir", "torchinductor_<user> assumed")
        return os.path.join(tempfile.gettempdir(), "torchinductor_" + getpass.getuser())


def diffusers_bnb_guard():
    """The class whose ``validate_environment`` refuses NF4 without a GPU (tests lift that one check)."""
    from diffusers.quantizers.bitsandbytes.bnb_quantizer import BnB4BitDiffusersQuantizer

    return BnB4BitDiffusersQuantizer


def keep_nf4_layout(model) -> None:
    """Keep ``model``'s NF4 weights in bitsandbytes' own layout on the CPU too, so that they give the same values on
    every machine: from 0.49, on CPUs with AVX512-BF16, a ``Linear4bit``'s first forward repacks its weight for
    bitsandbytes' CPU kernels (another shape, its scales in bf16), which the code that reads NF4 weights itself
    (``nf4_torch``, ``aoti``, ``compute``) and the compiled blocks' guards do not expect; its ``state_dict`` unpacks
    it again. A weight packed already is unpacked here (its scales keep the packing's bf16 rounding). Older
    releases have no such packing."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
        weight = getattr(module, "weight", None)
        if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
            _unpack_for_cpu(weight)


def _unpack_for_cpu(weight) -> None:
    """``weight`` (a ``Params4bit`` packed for bitsandbytes' CPU kernels) back in its own layout. bitsandbytes'
    inverse re-nests double-quantized scales but leaves plain ones as the packing laid them out (transposed, bf16)."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    weight.data, state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
    if not state.nested and state.absmax.dim() == 2:
        state.absmax = state.absmax.T.reshape(-1).float().contiguous()
    weight.quant_state = state


def quant_state_tensors(state) -> list[tuple[object, str]]:
    """``(owner, attribute)`` of every tensor of a bitsandbytes ``QuantState`` (double quantization included):
    what ``residency`` must move with an NF4 weight, and what the PE decoder's graph fingerprint reads.
    bitsandbytes 0.46-0.50 keep them in these attributes."""
    import torch

    owners = (state, state.state2) if getattr(state, "nested", False) else (state,)
    return [
        (owner, attr)
        for owner in owners
        for attr in ("absmax", "code", "offset")
        if torch.is_tensor(getattr(owner, attr, None))
    ]


@dataclass(frozen=True)
class NestedAbsmax:
    """The second level of a double-quantized ``QuantState``: the absmax is stored as uint8 codes, and
    ``absmax[b] = code[absmax_u8[b]] * absmax2[b // blocksize] + offset``."""

    absmax: object  # float32 tensor: one scale per ``blocksize`` first-level scales
    code: object  # float32 tensor: the 256-entry table of the uint8 codes
    offset: object  # float32 scalar tensor
    blocksize: int


def nested_absmax(state) -> NestedAbsmax | None:
    """The second-level quantization of a bitsandbytes ``QuantState``'s absmax (its ``state2`` and ``offset``,
    bitsandbytes 0.46-0.50), or None when the absmax is not double quantized."""
    if not getattr(state, "nested", False):
        return None
    return NestedAbsmax(state.state2.absmax, state.state2.code, state.offset, int(state.state2.blocksize))


def upstream_problems() -> list[str]:
    """Every private attribute this project uses that the installed libraries lack (empty when all is well)."""
    problems = []
    from diffusers import ErnieImagePipeline

    for name in ("_unpatchify_latents", "_patchify_latents", "_pad_text"):
        if not hasattr(ErnieImagePipeline, name):
            problems.append(f"diffusers ErnieImagePipeline.{name}")
    if (problem := fast_path_problem()) is not None:
        problems.append(problem)
    try:
        diffusers_bnb_guard().validate_environment  # noqa: B018
    except (ImportError, AttributeError):
        problems.append("diffusers BnB4BitDiffusersQuantizer.validate_environment")
    import torch

    if not hasattr(torch._C, "_accelerator_setAllocatorSettings") and not hasattr(
        torch.cuda.memory, "_set_allocator_settings"
    ):
        problems.append("torch allocator settings (_accelerator_setAllocatorSettings / _set_allocator_settings)")
    if not callable(getattr(torch._dynamo, "run", None)):
        problems.append("torch._dynamo.run")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir  # noqa: F401
    except ImportError:
        problems.append("torch._inductor.runtime.cache_dir_utils.default_cache_dir")
    try:
        from gradio.queueing import Queue

        source = inspect.getsource(Queue.__init__)
        problems += [f"gradio Queue.{a}" for a in _GRADIO_QUEUE_ATTRS if f"self.{a}" not in source]
    except ImportError:
        pass  # the library runs without gradio; only the app needs it
    try:
        from bitsandbytes.functional import QuantState

        for attr in ("absmax", "code", "offset", "state2", "nested", "blocksize"):
            if attr not in inspect.getsource(QuantState.__init__):
                problems.append(f"bitsandbytes QuantState.{attr}")
    except ImportError:
        problems.append("bitsandbytes.functional.QuantState")
    return problems
