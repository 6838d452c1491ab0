"""The UI: ``build_demo(service)`` lays out the Blocks around any object with ``ImageService``'s methods; the
event handlers are methods of ``Handlers``, which holds the per-run stop signals and the output folder."""

from __future__ import annotations

import secrets
from pathlib import Path

import gradio as gr

from ..errors import GenerationCancelled
from ..formatting import run_info, size_rows, stats_markdown
from ..memory import free_device_memory
from ..png import parameters_text
from ..progress import Progress
from ..request import IMAGES_RANGE, STEPS_RANGE, request_from_form
from .messages import STOPPED, user_message
from .outputs import DEFAULT_OUTPUT_DIR, OutputStore
from .runs import RunRegistry, drop_queued
from .zerogpu import decorator as zerogpu_decorator
from .zerogpu import gpu_generate

PRESETS = ["1024x1024", "848x1264", "1264x848", "768x1376", "896x1200", "1376x768", "1200x896"]
CUSTOM = "custom"
RANDOM_SEED_LIMIT = 2**32
HISTORY_LIMIT = 48


def gpu_task(fn):
    """Events call handlers as they are: on ZeroGPU only ``service.generate`` runs under ``spaces.GPU``
    (``Handlers._generate``, see ``zerogpu``), after validation."""
    return fn


class Handlers:
    """What the UI's events call. One stop signal per run; Stop sets every running one of the session."""

    def __init__(self, service, output_dir: str | Path | OutputStore | None = None, gpu_decorator=None):
        self.service = service
        self.outputs = (
            output_dir if isinstance(output_dir, OutputStore) else OutputStore(output_dir or DEFAULT_OUTPUT_DIR)
        )
        self.output_dir = self.outputs.folder
        self.runs = RunRegistry()
        self._generate = gpu_generate(service, gpu_decorator if gpu_decorator is not None else zerogpu_decorator())

    @staticmethod
    def _progress_callback(progress):
        def show(event: Progress) -> None:
            progress(event.fraction if event.fraction is not None else 0, desc=event.describe())

        return show

    def load_model(self, progress=gr.Progress()):
        try:
            self.service.load(self._progress_callback(progress))
        except Exception as err:
            raise gr.Error(user_message(err)) from err
        return f"Model ready ({self.service.label})."

    def _start_run(self, key: str, request=None):
        return self.runs.start(key, request)

    def _end_run(self, key: str, cancel) -> None:
        self.runs.end(key, cancel)

    def generate(
        self,
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
        progress=gr.Progress(),
    ):
        """Generate images; returns (gallery, seed used, revised prompt, run info)."""
        if randomize_seed is True:
            seed = secrets.randbelow(RANDOM_SEED_LIMIT)
        try:
            req, notes = request_from_form(
                prompt, negative_prompt, width, height, num_inference_steps, guidance_scale, seed, use_pe, num_images
            )
        except ValueError as err:
            raise gr.Error(user_message(err)) from err
        for note in notes:
            gr.Info(note)
        key = (request.session_hash if request else None) or "api"
        cancel = self._start_run(key, request)
        try:
            result = self._generate(req, on_progress=self._progress_callback(progress), cancel=cancel)
            if cancel.is_set():  # stopped or gone during the last step or the decode: keep nothing
                raise GenerationCancelled("stopped after the last step")
        except Exception as err:
            free_device_memory()
            raise gr.Error(user_message(err)) from err
        finally:
            self._end_run(key, cancel)
        files = []
        for image, image_seed in zip(result.images, result.seeds, strict=True):
            text = parameters_text(req, image_seed, result.revised_prompt, self.service.label)
            files.append((str(self.outputs.save(image, image_seed, text)), f"seed {image_seed}"))
        info = run_info(result, notes, getattr(self.service, "provenance", None))
        return files, req.seed, result.revised_prompt or "", info

    async def stop(self, request: gr.Request):
        """Stop the session's runs: running ones after their current step, queued ones before they start."""
        key = (request.session_hash if request else None) or "api"
        self.runs.stop_running(key)
        await drop_queued(request, key, STOPPED)

    @staticmethod
    def apply_preset(preset):
        if preset == CUSTOM:
            return gr.skip(), gr.skip()
        width, height = map(int, preset.split("x"))
        return width, height

    @staticmethod
    def add_history(images, history):
        items = [item[0] if isinstance(item, (list, tuple)) else item for item in images or []]
        history = ((history or []) + items)[-HISTORY_LIMIT:]
        return history, history

    def stats(self):
        """Package sizes, recorded benchmarks and live figures (JSON)."""
        return self.service.stats().to_dict()

    def refresh_stats(self):
        import pandas as pd

        data = self.service.stats()
        return stats_markdown(data), pd.DataFrame(size_rows(data), columns=["bar", "version", "GB"])


def build_demo(service, output_dir: str | None = None) -> gr.Blocks:
    """The UI around ``service`` (``ImageService`` or anything with its methods)."""
    handlers = Handlers(service, output_dir)
    defaults = service.defaults
    with gr.Blocks(title="ERNIE-Image NF4") as demo:
        gr.Markdown(f"# ERNIE-Image NF4\n4-bit ERNIE-Image on an ordinary GPU. Model: **{service.label}**")
        if (problem := service.unavailable_reason()) is not None:
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
                        steps = gr.Slider(*STEPS_RANGE, value=defaults.num_inference_steps, step=1, label="Steps")
                        guidance = gr.Slider(0.0, 15.0, value=defaults.guidance_scale, step=0.1, label="Guidance")
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
                x="bar",
                y="GB",
                color="version",
                sort=None,
                x_label_angle=-30,
                title="Original vs NF4 per component",
            )
            refresh = gr.Button("Refresh")
            stats_json = gr.JSON(visible=False)

        inputs = [prompt, negative, width, height, steps, guidance, seed, randomize, use_pe, count]
        # preprocess=False: the API's raw values reach request_from_form, whose errors name the field and range.
        event = run.click(
            gpu_task(handlers.generate),
            inputs,
            [gallery, seed, revised, info],
            api_name="generate",
            concurrency_limit=getattr(service, "replica_count", 1),
            preprocess=False,
        )
        event.success(
            handlers.add_history, [gallery, history_state], [history_state, history], api_visibility="private"
        )
        stop.click(handlers.stop, None, None, queue=False, api_visibility="private")
        load.click(gpu_task(handlers.load_model), None, status, api_visibility="private")
        preset.change(handlers.apply_preset, preset, [width, height], api_visibility="private", queue=False)
        refresh.click(handlers.stats, None, stats_json, api_name="stats")
        for trigger in (refresh.click, stats_tab.select, demo.load):
            trigger(handlers.refresh_stats, None, [stats_md, chart], api_visibility="private")
    demo.queue(default_concurrency_limit=1)
    return demo
