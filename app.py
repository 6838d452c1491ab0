"""ERNIE-Image NF4 web app: ``python app.py`` (``--tiny`` to try it without a GPU or download).

``build_demo(service)`` builds the UI around any object with the ``ImageService`` interface; ``main()``
parses the flags (each also read from an ``ERNIE_NF4_<FLAG>`` environment variable, e.g. for Spaces).
Nothing is loaded, downloaded or put on a GPU until the first Generate or "Load model".
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
from pathlib import Path

import gradio as gr

from ernie_nf4.generation import (
    DEFAULT_MAX_PE_TOKENS,
    IMAGES_RANGE,
    STEPS_RANGE,
    GenerationCancelled,
    request_from_form,
)
from ernie_nf4.png import parameters_text, save_png
from ernie_nf4.service import APP_MEMORY_MODES, VARIANTS, ImageService, ServiceConfig

PRESETS = ["1024x1024", "848x1264", "1264x848", "768x1376", "896x1200", "1376x768", "1200x896"]
CUSTOM = "custom"
RANDOM_SEED_LIMIT = 2**32

try:  # Hugging Face ZeroGPU: heavy work must run inside a spaces.GPU function
    import spaces

    gpu_task = spaces.GPU(duration=180)
except ImportError:

    def gpu_task(fn):
        return fn


def format_info(result) -> str:
    s = result.seconds
    per_step = 1000 * s["denoising"] / (result.request.steps * len(result.seeds))
    parts = [
        f"seed {', '.join(map(str, result.seeds))}",
        f"PE {s['pe']:.2f} s",
        f"text {s['text_encoding']:.2f} s",
        f"denoise {s['denoising']:.2f} s ({per_step:.0f} ms/step)",
        f"VAE {s['vae_decode']:.2f} s",
        f"total {s['total']:.2f} s",
    ]
    if result.peak_vram:
        parts.append(f"peak VRAM {result.peak_vram['reserved_bytes'] / 2**30:.2f} GiB")
    return " · ".join(parts)


def stats_markdown(stats: dict) -> str:
    package = stats["package"]
    if package is None:
        return "No package yet: it is fetched on the first Generate (or with **Load model**)."
    lines = [
        f"**{stats['model']}** — `{package['folder']}`",
        "",
        "| component | kept / quantized | original bytes | package bytes | reduction |",
        "|---|---|---:|---:|---:|",
    ]
    for name, c in package["components"].items():
        lines.append(
            f"| {name} | {c['action']} | {c['bytes_before']:,} | {c['bytes_after']:,} | {c['reduction']:.1%} |"
        )
    t = package["totals"]
    lines.append(f"| **total** | | {t['bytes_before']:,} | {t['bytes_after']:,} | {t['reduction']:.1%} |")
    for key, bench in package["benchmarks"].items():
        lines += ["", f"**Benchmark {key}** on {bench.get('gpu') or 'CPU'}", ""]
        lines += ["| mode | load s | total s | ms/step | peak reserved GiB |", "|---|---:|---:|---:|---:|"]
        for m in bench["modes"]:
            if m["status"] == "ok":
                peak = "–" if m["peak_reserved_gib"] is None else f"{m['peak_reserved_gib']:.2f}"
                lines.append(
                    f"| {m['mode']} | {m['load_seconds']:.1f} | {m['seconds']['total']:.2f} | "
                    f"{m['ms_per_step']:.1f} | {peak} |"
                )
    live = stats["live"]
    lines += [
        "",
        f"**This process** (memory mode {live['memory_mode']}{', compiled' if live['compile'] else ''}): "
        + (f"loaded in {live['load_seconds']:.1f} s" if live["loaded"] else "not loaded"),
    ]
    if live["last_run_seconds"]:
        lines[-1] += ", last run " + ", ".join(f"{k} {v:.2f} s" for k, v in live["last_run_seconds"].items())
    if live["last_run_peak_vram"]:
        lines[-1] += f", peak VRAM {live['last_run_peak_vram']['reserved_bytes'] / 2**30:.2f} GiB"
    return "\n".join(lines)


def size_chart(stats: dict):
    import pandas as pd

    rows = []
    if stats["package"]:
        for name, c in stats["package"]["components"].items():
            rows.append({"bar": f"{name} original", "version": "original", "GB": c["bytes_before"] / 1e9})
            rows.append({"bar": f"{name} NF4", "version": "NF4", "GB": c["bytes_after"] / 1e9})
    return pd.DataFrame(rows, columns=["bar", "version", "GB"])


def build_demo(service, output_dir: str | None = None) -> gr.Blocks:
    """The UI around ``service`` (``ImageService`` or anything with its methods)."""
    output_dir = Path(output_dir or tempfile.mkdtemp(prefix="ernie-nf4-out-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    defaults = service.defaults
    stop_flags: dict[str, threading.Event] = {}

    def progress_reporter(progress):
        return lambda message: progress(0, desc=message)

    @gpu_task
    def load_model(progress=gr.Progress(track_tqdm=True)):
        try:
            service.load(progress_reporter(progress))
        except Exception as err:
            raise gr.Error(str(err)) from err
        return f"Model ready ({service.label})."

    @gpu_task
    def generate(
        prompt,
        negative_prompt,
        width,
        height,
        num_inference_steps,
        guidance_scale,
        seed,
        randomize_seed,
        use_pe,
        num_images,
        request: gr.Request,
        progress=gr.Progress(track_tqdm=True),
    ):
        """Generate images; returns (gallery, seed used, revised prompt, run info)."""
        if randomize_seed:
            seed = secrets.randbelow(RANDOM_SEED_LIMIT)
        try:
            req, notes = request_from_form(
                prompt, negative_prompt, width, height, num_inference_steps, guidance_scale, seed, use_pe, num_images
            )
        except ValueError as err:
            raise gr.Error(str(err)) from err
        for note in notes:
            gr.Info(note)
        key = request.session_hash or "api"
        stop = stop_flags[key] = threading.Event()

        def on_step(done, total):
            progress((done, total), desc=f"denoising step {done}/{total}")
            if stop.is_set():
                raise GenerationCancelled

        try:
            result = service.generate(req, on_step=on_step, on_progress=progress_reporter(progress))
        except GenerationCancelled:
            _free_gpu_memory()
            raise gr.Error("Stopped. Nothing was kept from this run.", title="Stopped") from None
        except RuntimeError as err:
            _free_gpu_memory()
            raise gr.Error(str(err)) from err
        finally:
            stop_flags.pop(key, None)  # one flag per running request, none kept afterwards
        files = []
        for image, image_seed in zip(result.images, result.seeds, strict=True):
            text = parameters_text(req, image_seed, result.revised_prompt, service.label)
            files.append((str(save_png(image, output_dir, image_seed, text)), f"seed {image_seed}"))
        return files, req.seed, result.revised_prompt or "", " · ".join([format_info(result), *notes])

    def stop_run(request: gr.Request):
        flag = stop_flags.get(request.session_hash or "api")
        if flag is not None:
            flag.set()

    def apply_preset(preset):
        if preset == CUSTOM:
            return gr.skip(), gr.skip()
        width, height = map(int, preset.split("x"))
        return width, height

    def add_history(images, history):
        history = (history or []) + [item[0] if isinstance(item, (list, tuple)) else item for item in images or []]
        return history[-48:], history[-48:]

    def stats():
        """Package sizes, recorded benchmarks and live figures (JSON)."""
        return service.stats()

    def refresh_stats():
        data = service.stats()
        return stats_markdown(data), size_chart(data)

    with gr.Blocks(title="ERNIE-Image NF4") as demo:
        gr.Markdown(f"# ERNIE-Image NF4\n4-bit ERNIE-Image on an ordinary GPU. Model: **{service.label}**")
        if (problem := service.missing()) is not None:
            gr.Markdown(f"⚠️ **{problem}**", elem_id="missing")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    prompt = gr.Textbox(label="Prompt", lines=4, elem_id="prompt")
                    negative = gr.Textbox(label="Negative prompt", lines=2)
                    with gr.Row():
                        preset = gr.Dropdown([*PRESETS, CUSTOM], value="1024x1024", label="Resolution")
                        width = gr.Number(1024, label="Width", precision=0, step=16)
                        height = gr.Number(1024, label="Height", precision=0, step=16)
                    with gr.Row():
                        steps = gr.Slider(*STEPS_RANGE, value=defaults["steps"], step=1, label="Steps")
                        guidance = gr.Slider(0.0, 15.0, value=defaults["guidance"], step=0.1, label="Guidance")
                    with gr.Row():
                        seed = gr.Number(1234, label="Seed", precision=0)
                        randomize = gr.Checkbox(True, label="Randomize seed")
                        use_pe = gr.Checkbox(True, label="Prompt enhancer (PE)")
                        count = gr.Slider(*IMAGES_RANGE, value=1, step=1, label="Images")
                    with gr.Row():
                        run = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Stop", variant="stop")
                        load = gr.Button("Load model")
                    status = gr.Markdown("")
                with gr.Column(scale=3):
                    gallery = gr.Gallery(label="Images", format="png", columns=2, elem_id="gallery")
                    revised = gr.Textbox(label="Revised prompt (PE)", interactive=False)
                    info = gr.Textbox(label="Run info", interactive=False, elem_id="info")
            history_state = gr.State([])
            history = gr.Gallery(label="This session", columns=6, height=200)
        with gr.Tab("Stats", elem_id="stats-tab") as stats_tab:
            stats_md = gr.Markdown(elem_id="stats")
            chart = gr.BarPlot(
                x="bar", y="GB", color="version", sort=None, x_label_angle=-30, title="Original vs NF4 per component"
            )
            refresh = gr.Button("Refresh")
            stats_json = gr.JSON(visible=False)

        inputs = [prompt, negative, width, height, steps, guidance, seed, randomize, use_pe, count]
        # preprocess=False: the API's raw values reach request_from_form, whose errors name the field and range.
        event = run.click(
            generate,
            inputs,
            [gallery, seed, revised, info],
            api_name="generate",
            concurrency_limit=1,
            preprocess=False,
        )
        event.success(add_history, [gallery, history_state], [history_state, history], api_visibility="private")
        stop.click(stop_run, None, None, queue=False, api_visibility="private")
        load.click(load_model, None, status, api_visibility="private")
        preset.change(apply_preset, preset, [width, height], api_visibility="private", queue=False)
        refresh.click(stats, None, stats_json, api_name="stats")
        for trigger in (refresh.click, stats_tab.select, demo.load):
            trigger(refresh_stats, None, [stats_md, chart], api_visibility="private")
    demo.queue(default_concurrency_limit=1)
    return demo


def _free_gpu_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def share_warning(auth) -> str:
    return "WARNING: --share makes this app reachable by anyone with the link (72 h). " + (
        "It is protected by --auth." if auth else "Add --auth USER:PASS to protect it."
    )


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get

    def flag_default(name: str, default):
        return env(f"ERNIE_NF4_{name.upper()}", default)

    def switch(name: str) -> bool:  # ERNIE_NF4_<NAME>=1/true/yes/on turns a switch on; 0/false/no/off or unset: off
        return flag_default(name, "").strip().lower() in ("1", "true", "yes", "on")

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=flag_default("model_dir", None), help="NF4 package folder to use or create")
    p.add_argument("--repo-id", default=flag_default("repo_id", None), help="Hub repo of a pre-quantized package")
    p.add_argument("--source", default=flag_default("source", None), help="original to quantize if no package")
    p.add_argument(
        "--variant", choices=list(VARIANTS), default=flag_default("variant", "ernie-image"), help="model variant"
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default=flag_default("device", None), help="where to run")
    p.add_argument("--host", default=flag_default("host", "127.0.0.1"), help="address to listen on")
    p.add_argument("--port", type=int, default=int(flag_default("port", 7860)), help="port to listen on")
    p.add_argument("--share", action="store_true", default=switch("share"), help="public link")
    p.add_argument("--auth", default=flag_default("auth", None), help="USER:PASS required to open the app")
    p.add_argument("--tiny", action="store_true", default=switch("tiny"), help="tiny random model")
    p.add_argument(
        "--max-pe-tokens",
        type=int,
        default=int(flag_default("max_pe_tokens", DEFAULT_MAX_PE_TOKENS)),
        help="cap on the prompt enhancer's new tokens (it rewrites the prompt before generating)",
    )
    p.add_argument(
        "--memory-mode",
        choices=list(APP_MEMORY_MODES),
        default=flag_default("memory_mode", "gpu"),
        help="gpu: every model stays on the GPU (about 9.3 GiB at 1024x1024); low-vram: the models take turns on "
        "the GPU from pinned CPU memory (about 5.7 GiB, about as fast; needs ~9 GB of free RAM)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=switch("compile"),
        help="compile the transformer blocks and CUDA-graph the prompt enhancer at load (about 0.6x the time per "
        "image; the first start compiles for ~30 s, later starts reuse the cache)",
    )
    p.add_argument(
        "--verify-sha256",
        action="store_true",
        default=switch("verify_sha256"),
        help="check every package file's sha256 when loading (sizes are always checked)",
    )
    return p


def config_from_args(args) -> ServiceConfig:
    variant = VARIANTS[args.variant]
    model_dir = args.model_dir or ("ERNIE-Image-NF4-tiny" if args.tiny else "ERNIE-Image-NF4")
    return ServiceConfig(
        model_dir=model_dir,
        repo_id=args.repo_id or variant["repo_id"],
        source=args.source or variant["source"],
        variant=args.variant,
        device=args.device,
        tiny=args.tiny,
        verify_sha256=args.verify_sha256,
        max_pe_tokens=args.max_pe_tokens,
        memory_mode=args.memory_mode,
        compile=args.compile,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            sys.exit("error: --auth must be USER:PASS (both non-empty)")
        auth = (user, password)
    try:
        config = config_from_args(args)
    except ValueError as err:
        sys.exit(f"error: {err}")
    demo = build_demo(ImageService(config))
    if args.share:
        print(share_warning(auth), flush=True)
    _, local_url, share_url = demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=auth, prevent_thread_lock=True
    )
    if share_url:
        print(f"Public link: {share_url}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
