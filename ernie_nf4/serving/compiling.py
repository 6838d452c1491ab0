"""Whether and when the service compiles the transformer blocks, decided from its setting and the loaded pipeline.

``decide_compile`` returns a ``CompileDecision`` (compile now, in the background, or run eagerly, and why); the
service acts on it with ``make_compiler``, ``compile_now``, ``compile_in_background`` and ``capture_pe_graph``, and
before each request
``await_quick_compile`` lets a background compile that this machine's cache makes quick finish first.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass

from ..progress import Detail, ProgressCallback, detail, report
from ..runtime import compile_ahead

logger = logging.getLogger(__name__)

# Prompt of the prompt enhancer's warm-up at load (only when compiling in the background): its decoding graph is
# captured then, before the compile thread uses the GPU. A typical length, so that the KV cache it sizes (prompt +
# token cap) holds most prompts without growing, which would capture again.
PE_WARM_UP_PROMPT = (
    "A quiet harbour town at dawn, seen from a hill: fishing boats with faded blue and red hulls, wet cobblestones, "
    "white houses with terracotta roofs, gulls over the water, soft mist, warm low sunlight, photographed on film."
)


class CompileWhen(str, enum.Enum):
    NOW = "now"  # at load, before the first run (low-vram: the transformer is on the GPU only in its turn)
    BACKGROUND = "background"  # in a thread while runs are eager (all-on-gpu)
    EAGER = "eager"  # not at all


COMPILE_OFF = "eager: compile off (--no-compile)"


@dataclass(frozen=True)
class CompileDecision:
    when: CompileWhen
    reason: str | Detail  # for people: why eager (shown in Stats), or what compiling does (the progress says)
    capture_pe_graph: bool = False  # run the PE once before the compile thread starts


def eager_reason(compile: bool | None, loaded) -> str | None:
    """None when the transformer blocks should compile, else why they run eagerly (for Stats). ``compile``: the
    service's setting (None: on a CUDA GPU, in every memory mode)."""
    if compile is False:
        return COMPILE_OFF
    if not loaded.fast:
        return "eager: this diffusers has no fast path to compile"
    if compile is None and not loaded.device.startswith("cuda"):
        return "eager: compiling is the default on a CUDA GPU only (--compile turns it on)"
    return None


def decide_compile(compile: bool | None, loaded) -> CompileDecision:
    """What to do with the loaded pipeline's transformer blocks under the service's ``compile`` setting."""
    if (reason := eager_reason(compile, loaded)) is not None:
        return CompileDecision(CompileWhen.EAGER, reason)
    if loaded.residency is not None:
        return CompileDecision(CompileWhen.NOW, detail("compile_now"))
    return CompileDecision(
        CompileWhen.BACKGROUND,
        detail("compile_background"),
        capture_pe_graph=loaded.device.startswith("cuda") and loaded.has_pe,
    )


def make_compiler(transformer):
    """``(BlockCompiler, None)`` for the fast-path transformer, or ``(None, why eager)`` when it cannot be made (e.g. a
    cache folder that cannot be created): compiling never costs a run."""
    from ..runtime.fast_transformer import BlockCompiler

    try:
        return BlockCompiler(transformer), None
    except Exception as err:
        reason = f"eager: compile failed ({type(err).__name__}: {err})"
        logger.warning("%s", reason)
        return None, reason


# GPU memory left free beside the loaded models for the requests that run while a helper compiles (a 1024x1024 image
# reserves about 1.6 GiB more than the models at rest in all-on-gpu mode: ``python -m ernie_nf4.benchmark``, H200).
REQUEST_HEADROOM_GIB = 2.5


def helper_refused(loaded, compiled_before: bool, free_gib: float, spare_gib: float) -> str | None:
    """Why a first compile should not run in a helper process (``runtime.compile_ahead``), or None when it should.
    ``free_gib``: the GPU memory no process holds; ``spare_gib``: what this process's allocator holds unused. The
    helper needs ``AHEAD_GIB`` of the free memory, and the requests beside it ``REQUEST_HEADROOM_GIB`` of the rest."""
    if not loaded.device.startswith("cuda"):
        return "not on a CUDA GPU"
    if compiled_before:
        return "compiled on this machine before: quick in this process"
    if loaded.loras is not None:
        return "LoRAs change the compiled blocks, which the helper's stand-in does not have"
    if free_gib < compile_ahead.AHEAD_GIB or free_gib + spare_gib < compile_ahead.AHEAD_GIB + REQUEST_HEADROOM_GIB:
        return f"{free_gib:.1f} GiB free on the GPU, too little for a helper beside the requests"
    return None


def compile_in_background(compiler, loaded, package_dir) -> None:
    """Start ``compiler``'s background compile. A first compile on this machine compiles in a helper process first
    (``runtime.compile_ahead``), where the requests that run eagerly meanwhile do not share this process's
    interpreter with it (beside a compile thread they take about 1.4x as long); the compile thread waits for the
    helper and then finds every kernel in Inductor's cache. Where ``helper_refused`` says why not, or when the
    helper cannot start, the thread compiles alone."""
    import torch

    from ..runtime.fast_transformer import CompileState

    reason = "no package folder"
    if package_dir is not None:
        free = spare = 0.0
        if loaded.device.startswith("cuda"):
            free = torch.cuda.mem_get_info(loaded.device)[0] / 2**30
            spare = (torch.cuda.memory_reserved(loaded.device) - torch.cuda.memory_allocated(loaded.device)) / 2**30
        reason = helper_refused(loaded, compiler.recorded_seconds() is not None, free, spare)
    if reason is None:
        try:
            compiler.ahead = compile_ahead.start(package_dir, loaded.device, loaded.compute)
        except Exception as err:  # an optimisation: the thread compiles alone
            logger.warning("could not start the compile helper (%s: %s)", type(err).__name__, err)
    else:
        logger.info("the blocks compile in this process: %s", reason)
    compiler.start()
    if compiler.ahead is not None and compiler.state is CompileState.FAILED:  # e.g. priming failed: no one waits
        compiler.ahead.stop()


def compile_now(compiler, loaded) -> None:
    """Compile in this thread with the transformer on the GPU, and switch to the compiled blocks when ready."""
    loaded.use("transformer")
    if compiler.compile():
        compiler.activate()


def capture_pe_graph(generator, on_progress: ProgressCallback | None) -> None:
    """Run the prompt enhancer once now, before the compile thread starts, so its CUDA graph is captured (and
    its Triton kernels built) while nothing else uses the GPU, and the first request does not pay for it. A
    failure here is only logged: the first request runs the PE as it would have."""
    import torch

    report(on_progress, "pe", detail("pe_graph"))
    try:
        with torch.cuda.device(generator.loaded.device):
            generator.enhance_prompt(PE_WARM_UP_PROMPT, 1024, 1024, seed=0)
    except Exception as err:  # a warm-up: the real run reports its own errors
        logger.warning("prompt enhancer warm-up failed (%s: %s)", type(err).__name__, err)


# How long a request waits for a quick compile at most: its last time here, times this, plus a margin, within a cap.
QUICK_COMPILE_PATIENCE, QUICK_COMPILE_MARGIN_SECONDS, QUICK_COMPILE_MAX_SECONDS = 3.0, 15.0, 45.0


def await_quick_compile(compiler, on_progress: ProgressCallback | None = None, cancel=None) -> bool:
    """Wait for a background compile whose kernels are in Inductor's cache, so that it takes seconds
    (``BlockCompiler.expected_seconds``: it compiled on this machine before, or a helper process has compiled it),
    so that the request runs compiled from its first step rather than wholly eagerly. A first compile (tens of
    seconds) is not waited for: the request runs eagerly meanwhile. Gives up after a few times the expected
    seconds, or when ``cancel`` is set. True when it waited."""
    from ..runtime.fast_transformer import CompileState

    if compiler is None or compiler.state is not CompileState.COMPILING:
        return False
    if (expected := compiler.expected_seconds) is None:
        return False
    report(on_progress, "compile", detail("compile_finish", seconds=expected))
    patience = QUICK_COMPILE_PATIENCE * expected + QUICK_COMPILE_MARGIN_SECONDS
    deadline = time.monotonic() + min(patience, QUICK_COMPILE_MAX_SECONDS)
    while compiler.compiling and time.monotonic() < deadline:
        if cancel is not None and cancel.is_set():
            break
        compiler.wait(timeout=0.1)
    return True
