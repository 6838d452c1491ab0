"""``python app.py`` / ``ernie-nf4-app``: flags, each also read from an environment variable, then launch.

Flags mirror ``ServiceConfig``'s fields. Each flag ``--x-y`` can be set by ``ERNIE_NF4_X_Y`` (how a Hugging Face
Space configures it); where to listen also follows Gradio's own ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``,
and on a Space (``SPACE_ID`` set) defaults to 0.0.0.0:7860. A flag given on the command line wins. Bad values,
from a flag or a variable, end the program with one line naming them and a non-zero exit.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path

from ..errors import ErnieNF4Error, InvalidArgument
from ..runtime.compute import Compute
from ..runtime.memory_modes import APP_MEMORY_MODES, MemoryMode
from ..serving.loras import LoraSource, local_file, loras_in_folder, offered_loras, parse_lora, parse_lora_list
from ..serving.replicas import ReplicaService, parse_gpus
from ..serving.service import ImageService, ServiceConfig, preload
from ..system import parse_device
from ..variants import DEFAULT_VARIANT, VARIANTS, get_variant
from . import limits as app_limits
from . import zerogpu
from .history import DEFAULT_KEY_FILE, load_key
from .limits import MB, Limits
from .outputs import OutputStore

ON_WORDS = ("1", "true", "yes", "on")
SHARED_KEEP = ("200", "24")  # --keep-outputs, --keep-hours when shared (--share, a Space) and neither is given
OFF_WORDS = ("0", "false", "no", "off", "")
# The tiny random model's prompt enhancer writes noise up to its cap: a small one keeps a run on a CPU to seconds.
TINY_PE_TOKENS = 32


class SettingsError(argparse.ArgumentTypeError, ValueError):
    """A flag or environment variable has a value that cannot be used; the message names it."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one ``SettingsError`` line (main prints it), not usage plus a message."""

    def error(self, message):
        raise SettingsError(f"{message} (see python app.py --help)")


def env_name(flag: str) -> str:
    return "ERNIE_NF4_" + flag.upper().replace("-", "_")


def switch(flag: str, environ) -> bool:
    value = environ.get(env_name(flag), "").strip().lower()
    if value in ON_WORDS:
        return True
    if value in OFF_WORDS:
        return False
    raise SettingsError(f"{env_name(flag)}={environ[env_name(flag)]!r}: use one of {ON_WORDS} or {OFF_WORDS[:-1]}")


def optional_switch(flag: str, environ) -> bool | None:
    """A ``--x/--no-x`` switch's default from ``ERNIE_NF4_X``: None (the automatic choice) when unset or empty."""
    if not environ.get(env_name(flag), "").strip():
        return None
    return switch(flag, environ)


def port_number(text: str, name: str = "--port") -> int:
    try:
        port = int(str(text).strip())
    except ValueError:
        raise SettingsError(f"{name} must be a port number in [1, 65535], got {text!r}") from None
    if not 1 <= port <= 65535:
        raise SettingsError(f"{name} must be a port number in [1, 65535], got {port}")
    return port


def check_device(device: str | None, environ=None) -> str | None:
    """``--device`` / ``ERNIE_NF4_DEVICE`` as the loader takes it; refused at start when it is none of those, or
    names a GPU number this machine does not have."""
    try:
        device = parse_device(device)
    except InvalidArgument:
        raise SettingsError(
            f"--device (or {env_name('device')}) {device!r}: use one of cuda, cuda:N or cpu (N: the GPU's number)"
        ) from None
    if device is None or not device.startswith("cuda:") or zerogpu.on_zerogpu(environ):
        return device  # on ZeroGPU, CUDA is not touched before the platform's package is imported
    import torch

    count = torch.cuda.device_count()
    if int(device[5:]) >= max(count, 1):
        gpus = f"GPUs cuda:0 to cuda:{count - 1}" if count else "no CUDA GPU"
        raise SettingsError(f"--device (or {env_name('device')}) {device}: this machine has {gpus}")
    return device


def check_folder(path, flag: str) -> None:
    """A folder the app uses or creates: refused at start when it, or the nearest existing folder above it, is a
    file."""
    if path is None:
        return
    folder = Path(str(path)).expanduser()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == folder else f"cannot be created: {existing} is a file"
        raise SettingsError(f"--{flag} (or {env_name(flag)}) {str(path)!r} {where}; give a folder")


def default_host(environ) -> str:
    for name in (env_name("host"), "GRADIO_SERVER_NAME"):
        if environ.get(name):
            return environ[name]
    return "0.0.0.0" if environ.get("SPACE_ID") else "127.0.0.1"


def default_port(environ) -> int:
    """The port when ``--port`` is not given: ``ERNIE_NF4_PORT``, else ``GRADIO_SERVER_PORT``, else 7860."""
    for name in (env_name("port"), "GRADIO_SERVER_PORT"):
        if environ.get(name):
            return port_number(environ[name], name)
    return 7860


def _model_flags(p: argparse.ArgumentParser, env) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model-dir", default=env("model-dir"), help="package folder to use (or create)")
    g.add_argument("--repo-id", default=env("repo-id"), help="Hub repo of a pre-quantized package to download")
    g.add_argument("--source", default=env("source"), help="original to quantize if there is no package")
    g.add_argument(
        "--variant",
        metavar="{" + ",".join(VARIANTS) + "}",
        default=env("variant", DEFAULT_VARIANT),
        help="model variant",
    )
    g.add_argument(
        "--tiny",
        action="store_true",
        default=env.switch("tiny"),
        help=f"tiny random model (CPU is fine; its prompt enhancer writes at most {TINY_PE_TOKENS} tokens unless "
        "--max-pe-tokens says otherwise)",
    )
    g.add_argument(
        "--verify-sha256",
        action="store_true",
        default=env.switch("verify-sha256"),
        help="check every package file's sha256 when loading (sizes and headers are always checked)",
    )


def _lora_flags(p: argparse.ArgumentParser, env) -> None:
    g = p.add_argument_group("LoRAs")
    g.add_argument(
        "--lora",
        action="append",
        metavar="NAME=PATH_OR_HUB_ID",
        help="a LoRA requests may pick by NAME: a local .safetensors file, a Hub repo owner/repo (its one "
        ".safetensors file, or pytorch_lora_weights.safetensors) or owner/repo/path/file.safetensors; repeat for "
        f"more. {env_name('lora')} takes several, separated by ';' or new lines",
    )
    g.add_argument(
        "--lora-dir",
        default=env("lora-dir"),
        help="a folder whose .safetensors files are offered as LoRAs, each named by its file name",
    )


def _runtime_flags(p: argparse.ArgumentParser, env) -> None:
    g = p.add_argument_group("running the model")
    g.add_argument("--device", default=env("device"), help="cuda, cuda:N or cpu (default: cuda when present)")
    g.add_argument(
        "--memory-mode",
        metavar="{" + ",".join(mode.value for mode in APP_MEMORY_MODES) + "}",
        default=env("memory-mode", MemoryMode.AUTO.value),
        help="auto (default): all-on-gpu when the GPU has 10.5 GiB for this app, else low-vram (6 GiB), else a clear "
        "refusal; all-on-gpu: every model stays on the GPU (about 9.5 GiB at 1024x1024); low-vram: the models "
        "take turns on the GPU from page-locked CPU memory (about 5.9 GiB, about as fast; ~9 GB of free RAM)",
    )
    g.add_argument(
        "--compute",
        metavar="{" + ",".join(c.value for c in Compute) + "}",
        default=env("compute", Compute.BF16.value),
        help="how the transformer's linear layers multiply, its weights staying NF4: bf16 (default), fp8 (GPUs of "
        "compute capability 8.9 on: Ada, Hopper, Blackwell), int8 (8.0 on: Ampere), or auto (FP8 where the GPU "
        "has it and blocks are compiled, for products of 4,096 tokens or more, where it is faster; else bf16). FP8 "
        "and INT8 round each layer's input and weight once more; the README's FP8 and INT8 compute section has their "
        "speed and error on one card",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=env.optional_switch("compile"),
        help="compile the transformer blocks (torch.compile). Default: on with a CUDA GPU; in all-on-gpu mode in "
        "the background after loading while requests run eagerly, switching at the next request once ready (a "
        "compile this machine made before, kept in its cache, is waited for instead); in low-vram mode at load; "
        "--compile also turns it on on the CPU, and on ZeroGPU compiles ahead of time (experimental); --no-compile: "
        "always eager",
    )
    g.add_argument(
        "--preload",
        action=argparse.BooleanOptionalAction,
        default=env.optional_switch("preload"),
        help="load the model (and start compiling) in the background as the app starts. Default: on with a CUDA "
        "GPU; --no-preload waits for the first Generate or Load model",
    )
    g.add_argument(
        "--max-pe-tokens",
        default=env("max-pe-tokens"),
        help="cap on the prompt enhancer's new tokens (default: the stock limit, 2048; the PE stops by itself)",
    )
    g.add_argument(
        "--gpus",
        default=env("gpus"),
        help="all or 0,1,...: one model replica per GPU, one job per replica at a time (default: one device)",
    )


def _server_flags(p: argparse.ArgumentParser, env) -> None:
    g = p.add_argument_group("serving")
    g.add_argument(
        "--host", default=default_host(env.environ), help="address to listen on (default 127.0.0.1; 0.0.0.0 on a Space)"
    )
    g.add_argument("--port", type=port_number, help="port to listen on (default 7860)")
    g.add_argument("--share", action="store_true", default=env.switch("share"), help="public link (72 h)")
    g.add_argument("--auth", default=env("auth"), help="USER:PASS required to open the app")


def _output_and_limit_flags(p: argparse.ArgumentParser, env) -> None:
    g = p.add_argument_group("outputs and limits")
    g.add_argument(
        "--output-dir",
        default=env("output-dir", "~/.cache/ernie-nf4/outputs"),
        help="folder for the generated PNGs (one folder for every start)",
    )
    g.add_argument(
        "--history-key-file",
        default=env("history-key-file", str(DEFAULT_KEY_FILE)),
        help="file holding the key that signs the history each browser keeps, and encrypts it there (made on first "
        "start, mode 0600); the history outlives a restart while this file does. Give starts that share an output "
        "folder the same file",
    )
    g.add_argument(
        "--keep-outputs",
        default=env("keep-outputs"),
        help="keep at most this many PNGs, deleting older ones (default: all kept; with --share or on a Space 200)",
    )
    g.add_argument(
        "--keep-hours",
        default=env("keep-hours"),
        help="delete PNGs older than this many hours (default: never; with --share or on a Space 24)",
    )
    g.add_argument(
        "--max-queue", default=env("max-queue", "32"), help="jobs waiting or running, all clients; more are 'busy'"
    )
    g.add_argument(
        "--max-jobs-per-client", default=env("max-jobs-per-client", "2"), help="jobs one client address may have queued"
    )
    g.add_argument(
        "--max-body-kb", default=env("max-body-kb", "1000"), help="largest request body accepted (uploads aside)"
    )
    g.add_argument(
        "--max-upload-mb",
        default=env("max-upload-mb", "10"),
        help="largest upload (a PNG to restore settings from); 0 turns uploads off",
    )
    g.add_argument(
        "--uploads-per-window",
        default=env("uploads-per-window", "10"),
        help="uploads one client address may make in 10 minutes; past that or --upload-mb-per-window, an upload is "
        "refused saying when it can upload again",
    )
    g.add_argument(
        "--upload-mb-per-window",
        default=env("upload-mb-per-window", "30"),
        help="megabytes one client address may upload in 10 minutes",
    )


class _Environment:
    """The ``ERNIE_NF4_*`` variables as flag defaults: ``env("flag", default)`` for text, ``switch`` for on/off."""

    def __init__(self, environ):
        self.environ = environ

    def __call__(self, flag: str, default=None):
        return self.environ.get(env_name(flag)) or default

    def switch(self, flag: str) -> bool:
        return switch(flag, self.environ)

    def optional_switch(self, flag: str) -> bool | None:
        return optional_switch(flag, self.environ)


def build_parser(environ=None) -> argparse.ArgumentParser:
    """The flags, with defaults from ``environ``; raises ``SettingsError`` for an unusable variable. Values are
    checked once, where they are used: ``parse_args`` and ``settings_from_args`` name the flag a refusal is for."""
    env = _Environment(os.environ if environ is None else environ)
    p = _Parser(prog="python app.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _model_flags(p, env)
    _lora_flags(p, env)
    _runtime_flags(p, env)
    _server_flags(p, env)
    _output_and_limit_flags(p, env)
    return p


def flag_error(flag: str, err: Exception) -> SettingsError:
    """``err`` as a ``SettingsError`` that names ``--flag`` and its variable."""
    return SettingsError(f"--{flag} (or {env_name(flag)}): {err}")


def number(args, flag: str, kind=int):
    """The text of ``--flag`` (from the command line or ``ERNIE_NF4_FLAG``) as a ``kind``; its range is checked
    where the value is used (``settings_from_args``)."""
    attr = flag.replace("-", "_")
    text = getattr(args, attr)
    try:
        value = kind(str(text).strip())
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SettingsError(f"--{flag} (or {env_name(flag)}) must be {what}, got {text!r}") from None
    setattr(args, attr, value)
    return value


def memory_mode(text) -> MemoryMode:
    """``--memory-mode`` through ``MemoryMode.parse``, the one check of a mode's name, narrowed to the modes the app
    offers."""
    try:
        return MemoryMode.parse(text, allowed=APP_MEMORY_MODES)
    except InvalidArgument as err:
        raise flag_error("memory-mode", err) from None


def lora_sources(args, environ) -> tuple[LoraSource, ...]:
    """The LoRAs of ``--lora`` (else ``ERNIE_NF4_LORA``) and ``--lora-dir``: entries well formed, names given once,
    local files there (a Hub id is fetched when the model loads); a refusal names the flag and its variable."""
    try:
        if args.lora is not None:
            entries = [parse_lora(text, "--lora") for text in args.lora]
        else:
            entries = parse_lora_list(environ.get(env_name("lora")), env_name("lora"))
        folder = args.lora_dir
        found = [] if not folder else loras_in_folder(folder, f"--lora-dir (or {env_name('lora-dir')})")
    except InvalidArgument as err:
        raise SettingsError(str(err)) from None
    try:
        sources = offered_loras(entries, found)
        for source in sources:
            local_file(source)
    except InvalidArgument as err:
        raise SettingsError(f"--lora (or {env_name('lora')}, --lora-dir): {err}") from None
    return sources


def parse_args(argv=None, environ=None) -> argparse.Namespace:
    """The flags parsed: text turned into the values the app takes (numbers, the memory mode, the variant's
    name), each refusal one ``SettingsError`` naming the flag and its variable."""
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else list(argv)
    # The port's variables are checked only when --port is not given (Gradio's own may be junk then).
    port_given = any(arg == "--port" or arg.startswith("--port=") for arg in argv)
    port = None if port_given else default_port(environ)
    args = build_parser(environ).parse_args(argv)
    try:
        args.variant = get_variant(args.variant).name
    except InvalidArgument as err:
        raise flag_error("variant", err) from None
    args.memory_mode = memory_mode(args.memory_mode)
    try:
        args.compute = Compute.parse(args.compute)
    except InvalidArgument as err:
        raise flag_error("compute", err) from None
    args.loras = lora_sources(args, environ)
    if args.max_pe_tokens is not None:
        number(args, "max-pe-tokens", int)  # the range is ServiceConfig's
    args.device = check_device(args.device, environ)
    args.auth = parse_auth(args.auth)
    check_host(args.host)
    if args.port is None:
        args.port = port
    check_folder(args.model_dir, "model-dir")
    check_folder(args.output_dir, "output-dir")
    check_folder(Path(args.history_key_file).expanduser().parent, "history-key-file")
    keep_given = args.keep_outputs is not None or args.keep_hours is not None
    if not keep_given and (args.share or environ.get("SPACE_ID")):  # shared: old outputs are deleted
        args.keep_outputs, args.keep_hours = SHARED_KEEP
    for flag, kind in (("keep-outputs", int), ("keep-hours", float)):
        if getattr(args, flag.replace("-", "_")) is not None:
            number(args, flag, kind)
    for flag, kind in (
        ("max-queue", int),
        ("max-jobs-per-client", int),
        ("max-body-kb", int),
        ("max-upload-mb", int),
        ("uploads-per-window", int),
        ("upload-mb-per-window", int),
    ):
        number(args, flag, kind)
    return args


# The flag behind each field a settings class checks (the error's ``field``), to name it in a refusal.
FIELD_FLAGS = {
    "max_pe_tokens": "max-pe-tokens",
    "memory_mode": "memory-mode",
    "compute": "compute",
    "keep_count": "keep-outputs",
    "keep_hours": "keep-hours",
    "folder": "output-dir",
    "max_queue": "max-queue",
    "max_jobs_per_client": "max-jobs-per-client",
    "max_body_bytes": "max-body-kb",
    "max_upload_bytes": "max-upload-mb",
    "history_key_file": "history-key-file",
}


def settings_from_args(args) -> tuple[ServiceConfig, Limits, OutputStore]:
    """The service's config, the limits and the output folder from parsed flags. Their classes check the ranges;
    a refusal becomes a ``SettingsError`` naming the flag and its variable."""
    try:
        config = config_from_args(args)
        limits = limits_from_args(args)
        outputs = OutputStore(args.output_dir, keep_count=args.keep_outputs, keep_hours=args.keep_hours)
    except InvalidArgument as err:
        raise _named(err) from None
    return config, limits, outputs


def history_key(args) -> bytes:
    """The key of ``--history-key-file`` (made there on first start); a file that holds none is refused naming the
    flag."""
    try:
        return load_key(args.history_key_file)
    except InvalidArgument as err:
        raise _named(err) from None


def _named(err: InvalidArgument) -> Exception:
    """``err`` as a ``SettingsError`` naming the flag of its field; ``err`` itself for a field of no flag."""
    if err.field not in FIELD_FLAGS:
        return err
    return flag_error(FIELD_FLAGS[err.field], err)


def limits_from_args(args) -> Limits:
    """The queue, per-client and size limits from parsed flags (``Limits`` checks their ranges; the sizes are
    checked here, in the flags' units)."""
    budget = " (--max-upload-mb 0 turns uploads off)"
    for flag, least, meaning in (
        ("max-body-kb", 1, ""),
        ("max-upload-mb", 0, " (0 turns uploads off)"),
        ("uploads-per-window", 1, budget),
        ("upload-mb-per-window", 1, budget),
    ):
        value = getattr(args, flag.replace("-", "_"))
        if value < least:
            raise SettingsError(f"--{flag} (or {env_name(flag)}) must be at least {least}{meaning}, got {value}")
    return Limits.for_environment(
        max_queue=args.max_queue,
        max_jobs_per_client=args.max_jobs_per_client,
        max_body_bytes=args.max_body_kb * 1000,
        max_upload_bytes=args.max_upload_mb * MB,
        uploads_per_window=args.uploads_per_window,
        upload_bytes_per_window=args.upload_mb_per_window * MB,
    )


def build_service(args, config):
    """One ``ImageService``, or a ``ReplicaService`` with ``--gpus``; on ZeroGPU the weights load now."""
    if zerogpu.on_zerogpu():
        service = ImageService(zerogpu.adjust_config(zerogpu.use_hf_cache(config)))
        # module level, outside the GPU function, as ZeroGPU expects; with --compile, the blocks then compile ahead
        # of time (experimental)
        zerogpu.preload(service, ahead_of_time=config.compile is True)
        return service
    devices = parse_gpus(args.gpus)
    return ReplicaService(config, devices) if devices else ImageService(config)


def start_loading(service, args):
    """What ``python app.py`` starts as it comes up: on a CUDA GPU (or with ``--preload``) the model loads in a
    background thread, and with it the transformer blocks start compiling; a request that comes first waits for
    that load (and shows its progress). Returns the thread, or None. Imports no Gradio (scripts/gpu_first_image.py
    runs this as the app does)."""
    if zerogpu.on_zerogpu():  # loaded already, before the app (build_service)
        return None
    wanted = args.preload
    if wanted is None:
        import torch

        wanted = torch.cuda.is_available() and args.device != "cpu"
    if not wanted or service.unavailable_reason() is not None:
        return None
    return preload(service)


def parse_auth(text: str | None):
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SettingsError("--auth must be USER:PASS (both non-empty)")
    return user, password


def check_host(host: str) -> None:
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        raise SettingsError(f"--host {host!r}: not an address of this machine or a resolvable name") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(args) -> str | None:
    """A warning when the app is reachable beyond this machine without ``--auth``."""
    if args.share:
        return "WARNING: --share makes this app reachable by anyone with the link (72 h). " + (
            "It is protected by --auth." if args.auth else "Add --auth USER:PASS to protect it."
        )
    if not is_loopback(args.host) and not args.auth:
        return (
            f"WARNING: listening on {args.host}, reachable from other machines, without --auth. "
            "Add --auth USER:PASS to protect it."
        )
    return None


def config_from_args(args) -> ServiceConfig:
    """The service's config from parsed flags (``ServiceConfig`` checks the memory mode and the PE cap)."""
    variant = VARIANTS[args.variant]
    model_dir = args.model_dir or (f"{variant.default_package_dir}-tiny" if args.tiny else variant.default_package_dir)
    return ServiceConfig(
        model_dir=model_dir,
        repo_id=args.repo_id or variant.repo_id,
        source=args.source or variant.source,
        variant=args.variant,
        device=args.device,
        tiny=args.tiny,
        verify_sha256=args.verify_sha256,
        max_pe_tokens=TINY_PE_TOKENS if args.tiny and args.max_pe_tokens is None else args.max_pe_tokens,
        memory_mode=args.memory_mode,
        compile=args.compile,
        loras=getattr(args, "loras", ()),
        compute=args.compute,
    )


def main(argv: list[str] | None = None) -> None:
    """``python app.py``: settings, the service (and its model loading in the background), the UI, launch."""
    # The operator's log: what the library reports (download, build, load, memory mode, warnings) with times.
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("ernie_nf4").setLevel(logging.INFO)
    try:
        args = parse_args(argv)
        os.environ["GRADIO_SERVER_PORT"] = str(args.port)  # Gradio reads it when imported (OutputStore imports it)
        config, limits, outputs = settings_from_args(args)
        key = history_key(args)
        service = build_service(args, config)
    except (SettingsError, ErnieNF4Error, OSError) as err:
        sys.exit(f"error: {err}")
    start_loading(service, args)  # before Gradio is imported and the UI built and launched: the two overlap
    from .ui import build_demo

    demo = build_demo(service, output_dir=outputs, history_key=key)
    launch_limits = app_limits.configure(demo, limits, outputs)
    for line in start_lines(args, service, outputs):
        print(line, flush=True)
    try:
        _, _, share_url = demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            auth=args.auth,
            prevent_thread_lock=True,
            quiet=True,  # Gradio's own lines suggest share=True in code; the app's name its flags
            **launch_limits,
        )
    except OSError as err:
        sys.exit(f"error: cannot listen on {args.host}:{args.port} ({err}); choose another --port or --host")
    print(f"Running on http://{display_host(args.host)}:{args.port}", flush=True)
    outputs.prune()  # old outputs go once this start is sure to serve
    if share_url:
        print(f"Public link: {share_url}", flush=True)
    elif not os.environ.get("SPACE_ID"):
        print("For a public link (72 h), start it with --share (and --auth USER:PASS to protect it).", flush=True)
    demo.block_thread()


def display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def start_lines(args, service, outputs) -> list[str]:
    """What the terminal says before the server starts: a warning when exposed, no GPU, where outputs go."""
    lines = [warning] if (warning := exposure_warning(args)) else []
    if (problem := service.unavailable_reason()) is not None:
        lines.append(f"Note: {problem}")
    if names := service.lora_names:
        lines.append(f"LoRAs offered: {', '.join(names)}")
    lines.append(outputs.policy())
    return lines
