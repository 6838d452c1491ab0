"""A first compile of the transformer's repeated block in a helper process, while the app runs requests eagerly.

A first compile of the blocks takes tens of seconds (``fast_transformer.BlockCompiler``); one whose kernels are in
Inductor's on-disk cache takes a few. In a thread of the app's process it shares the interpreter with the eager
requests that run meanwhile and slows them by about 1.4x. So on a machine that has not compiled the blocks,
``start`` launches ``python -m ernie_nf4.runtime.compile_ahead``: a process that loads a stand-in of the transformer,
the package's own weights of everything but the blocks and of its first block only (``write_stand_in``), and
compiles its block exactly as the app does, into the same cache, at a lower CPU priority. The app's compile thread
waits for it (``BlockCompiler.ahead``) and then takes seconds; the request after that runs compiled
(``BlockCompiler.expected_seconds``, ``serving.compiling``). One helper serves every replica on cards of one kind.

The helper leaves a record of its stand-in's compile (``compile_record``), and exits as soon as it has loaded the
stand-in when it finds one. A helper that fails, or runs past ``AHEAD_TIMEOUT_SECONDS``, costs the time it ran and a
log line: the app then compiles as it does without one. It ends with the app (``stop``, at exit too), and by itself
when the app is gone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

from ..atomic import write_text
from ..errors import ErnieNF4Error, PackageError
from ..package.format import REPAIR, read_model_index
from ..system import resolve_device
from .loader import check_transformer_loadable, load_component

logger = logging.getLogger(__name__)

# GPU memory the helper takes at most on the full-size model: CUDA's context, the stand-in (NF4) and the warm-up.
AHEAD_GIB = 1.5
# How long the app's compile thread waits for the helper before stopping it and compiling alone (a first compile of
# the full-size model took 37 s in the helper on an NVIDIA H200, imports included).
AHEAD_TIMEOUT_SECONDS = 300.0
NICENESS = 10  # the helper yields the CPU to the requests it runs beside
# The command that runs the helper (its arguments follow).
COMMAND = (sys.executable, "-m", __name__)
_ROOT = Path(__file__).resolve().parents[2]  # the folder this copy of ernie_nf4 is in: the helper runs from there
_HELPERS: dict[tuple, CompileAhead] = {}  # running or done, per package, compute, cache folder and kind of card
_HELPERS_LOCK = threading.Lock()


def write_stand_in(package: str | Path, output: str | Path) -> Path:
    """A transformer folder in ``output``: the package's transformer config with one block, and its weights (NF4
    quantization states included) of everything but the blocks and of the first block. Returns ``output``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    source, output = Path(package) / "transformer", Path(output)
    config = json.loads((source / "config.json").read_text())
    config["num_layers"] = 1
    tensors = {}
    for file in sorted(source.glob("*.safetensors")):
        with safe_open(file, "pt") as weights:
            for key in weights.keys():
                if not key.startswith("layers.") or key.startswith("layers.0."):
                    tensors[key] = weights.get_tensor(key)
    output.mkdir(parents=True, exist_ok=True)
    save_file(tensors, output / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    (output / "config.json").write_text(json.dumps(config, indent=2))
    return output


def _transformer_entry(package: Path) -> list:
    """The transformer's ``[library, class]`` in ``package``'s index; ``PackageError`` naming the argument and what
    is wrong when the folder is no ERNIE-Image pipeline or has no transformer of its own."""
    _, components = read_model_index(package, argument="package")
    if "transformer" not in components or not (package / "transformer" / "config.json").is_file():
        raise PackageError(f"package {package}: it has no transformer folder with a config.json; {REPAIR}")
    return components["transformer"]


def compile_stand_in(package: str | Path, device: str, compute: str = "bf16", cache_dir: str | Path | None = None):
    """Load the stand-in of ``package``'s transformer on ``device`` with ``compute``, as the loader loads the
    transformer, and compile its block (``BlockCompiler.compile``) into Inductor's cache at ``cache_dir``.
    Returns ``{"status": "compiled" | "cached", "seconds": ..., "phases": ...}``; raises what failed."""
    import torch

    from .compute import Compute, apply_compute
    from .fast_transformer import COMPILE_CACHE, BlockCompiler, enable_fast_path

    start = time.perf_counter()
    phases = {}

    def done(phase: str) -> None:
        phases[phase] = round(time.perf_counter() - start, 2)
        logger.info("%s at %.1f s", phase, phases[phase])

    package, device = Path(package), resolve_device(device)
    entry = _transformer_entry(package)
    check_transformer_loadable(package, argument="package")
    with tempfile.TemporaryDirectory(prefix="ernie-nf4-stand-in-") as folder:
        write_stand_in(package, Path(folder) / "transformer")
        done("stand-in written")
        load = dict(dtype=torch.bfloat16, device_map={"": device}, use_safetensors=True)
        model = load_component(Path(folder), "transformer", entry, **load)
    if (mode := Compute(compute)) is not Compute.BF16:
        apply_compute(model, mode)
    enable_fast_path(model)
    done("stand-in loaded")
    compiler = BlockCompiler(model, cache_dir or COMPILE_CACHE)
    if (seconds := compiler.recorded_seconds()) is not None:
        return {"status": "cached", "seconds": seconds, "phases": phases}
    if not compiler.compile():
        raise RuntimeError(compiler.error)
    done("compiled")
    return {"status": "compiled", "seconds": round(compiler.seconds, 2), "phases": phases}


def _end(process: subprocess.Popen) -> None:
    """Stop ``process`` and reap it (a finalizer: also at the app's exit)."""
    if process.poll() is None:
        process.kill()
    process.wait()


class CompileAhead:
    """The helper process of one first compile: ``wait()`` for it, ``succeeded`` once it compiled (or found its
    kernels cached), ``error`` when it failed (its last output lines), ``stop()`` to end it."""

    def __init__(self, package: str | Path, device: str, compute: str, cache_dir: str | Path):
        self.package, self.device, self.compute = str(Path(package).resolve()), device, compute
        self.cache_dir = str(Path(cache_dir).resolve())
        self.timeout = AHEAD_TIMEOUT_SECONDS  # what ``wait()`` allows it
        self.result: dict | None = None
        self.error: str | None = None
        self.started = time.perf_counter()
        self._folder = tempfile.TemporaryDirectory(prefix="ernie-nf4-compile-ahead-")
        self._result_file = Path(self._folder.name) / "result.json"
        self._log_file = Path(self._folder.name) / "log.txt"
        self._lock = threading.Lock()
        arguments = [self.package, "--device", device, "--compute", compute, "--cache-dir", self.cache_dir]
        arguments += ["--result", str(self._result_file), "--parent", str(os.getpid())]
        # run from this copy's folder, so that it is the ernie_nf4 the helper imports
        path = os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
        low = {"creationflags": subprocess.BELOW_NORMAL_PRIORITY_CLASS} if sys.platform == "win32" else {}
        with open(self._log_file, "wb") as log:
            self._process = subprocess.Popen(
                [*COMMAND, *arguments],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=_ROOT,
                env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": self.cache_dir, "PYTHONPATH": path},
                **low,
            )
        self._stop = weakref.finalize(self, _end, self._process)  # at the app's exit too

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    @property
    def succeeded(self) -> bool:
        """True once the helper has finished with the kernels in the cache (without waiting for it)."""
        return not self.running and self._finish() is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the helper, stopping it after ``timeout`` seconds (default: ``self.timeout``); True when it left
        the kernels cached."""
        try:
            self._process.wait(self.timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            logger.warning("the compile helper ran past %.0f s: stopped", self.timeout if timeout is None else timeout)
        self.stop()
        return self._finish() is not None

    def stop(self) -> None:
        """End the helper now (nothing once it has exited), and reap it."""
        self._stop()

    def _finish(self) -> dict | None:
        """The helper's result once it has exited (read once): None, with ``error`` set, when it failed."""
        with self._lock:
            if self.result is None and self.error is None:
                try:
                    result = json.loads(self._result_file.read_text())
                    status = result["status"]
                except (OSError, ValueError, KeyError, TypeError):
                    try:
                        lines = self._log_file.read_text(errors="replace").strip().splitlines()
                    except OSError:
                        lines = []
                    # its one-line error when it gave one, else the end of what it printed (a traceback's last line)
                    said = [line for line in lines if line.startswith("error: ")][-1:]
                    tail = " | ".join(line.strip() for line in said or lines[-3:])
                    self.error = f"exit status {self._process.returncode}: " + (tail if said else tail[-400:])
                    logger.warning("the compile helper failed; the blocks compile in this process (%s)", self.error)
                else:
                    self.result = result
                    elapsed = time.perf_counter() - self.started
                    logger.info("the compile helper is done (%s, %.1f s after it started)", status, elapsed)
            return self.result


def start(package: str | Path, device: str, compute: str, cache_dir: str | Path | None = None) -> CompileAhead:
    """The helper for ``package`` on ``device`` with ``compute`` (``compute.Compute``'s value): one already running
    or done for the same package, compute, cache and kind of card (another replica's), else a new one. Its kernels
    go to Inductor's cache, ``cache_dir`` unless the user chose one (``fast_transformer.use_compile_cache``), where
    the app's compile will look."""
    from .fast_transformer import COMPILE_CACHE, use_compile_cache

    cache = use_compile_cache(cache_dir or COMPILE_CACHE)
    key = (str(Path(package).resolve()), compute, str(Path(cache).resolve()), _card(device))
    with _HELPERS_LOCK:
        helper = _HELPERS.get(key)
        if helper is None or not (helper.running or helper.succeeded):
            helper = _HELPERS[key] = CompileAhead(package, device, compute, cache)
        return helper


def _card(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else device


def _exit_with_parent(parent: int) -> None:
    """End this process when the app that started it is gone (it would otherwise hold the GPU until it finishes)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ernie_nf4.runtime.compile_ahead",
        description="Compile the transformer's repeated block of an NF4 package into Inductor's cache, from a "
        "stand-in with its first block only (what the app runs for a first compile).",
    )
    parser.add_argument("package", help="the package folder")
    parser.add_argument("--device", default="cuda", help="where the blocks will run (default: cuda)")
    parser.add_argument(
        "--compute",
        default="bf16",
        choices=["bf16", "fp8", "int8", "auto"],
        help="how their products run (default: bf16)",
    )
    parser.add_argument("--cache-dir", default=None, help="Inductor's cache folder (default: the app's)")
    parser.add_argument("--result", default=None, help="write the result as JSON there")
    parser.add_argument("--parent", type=int, default=None, help="end when the process with this id is gone")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.parent is not None:
        threading.Thread(target=_exit_with_parent, args=(args.parent,), daemon=True).start()
    if hasattr(os, "nice"):
        os.nice(NICENESS)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache_dir
    import torch  # noqa: F401  (timed apart from the work)

    imported = time.perf_counter() - started
    logger.info("imported in %.1f s", imported)
    try:
        result = compile_stand_in(args.package, args.device, args.compute, args.cache_dir)
    except ErnieNF4Error as err:  # the package or the device: said in a line, as the other commands do
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    text = json.dumps({**result, "imported_seconds": round(imported, 2)})
    print(text, flush=True)
    if args.result:
        write_text(args.result, text)


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # done: not waiting for Inductor's compile workers to shut down at exit
