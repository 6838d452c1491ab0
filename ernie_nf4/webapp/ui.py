"""The UI: ``build_demo(service)`` lays out the Blocks around any object with ``ImageService``'s methods; the
event handlers are methods of ``Handlers``, which holds the per-run stop signals and the output folder.

The form's fields go by name: the components sit in a dict keyed by ``FormValues``' field names, and the handlers
turn Gradio's positional values into a ``FormValues`` as they receive them."""

from __future__ import annotations

import secrets
from dataclasses import asdict, fields, replace
from functools import partial
from pathlib import Path

import gradio as gr

from ..errors import GenerationCancelled, InvalidArgument
from ..formatting import run_info, size_rows, stats_markdown
from ..progress import Progress
from ..request import IMAGES_RANGE, STEPS_RANGE, FormValues, request_from_form
from ..system import free_device_memory
from .examples import EXAMPLES
from .i18n import I18N, t
from .messages import STOPPED, user_message
from .outputs import DEFAULT_OUTPUT_DIR, OutputStore
from .png_params import FormSettings, parameters_text, read_png_parameters
from .runs import RunRegistry, drop_queued
from .zerogpu import decorator as zerogpu_decorator
from .zerogpu import gpu_generate

PRESETS = ["1024x1024", "848x1264", "1264x848", "768x1376", "896x1200", "1376x768", "1200x896"]
CUSTOM = "custom"
RANDOM_SEED_LIMIT = 2**32
HISTORY_LIMIT = 48
TINY_SIZE, TINY_STEPS = 256, 4
# The generate event's inputs, by name and in the API's order; the fields a saved image's settings fill back in,
# then the randomize box (cleared, so the next run uses the restored seed).
FORM_FIELDS = tuple(field.name for field in fields(FormValues))
RESTORED_FIELDS = (*(field.name for field in fields(FormSettings)), "randomize_seed")


def _session_key(request) -> str:
    return (request.session_hash if request else None) or "api"


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
        status = getattr(self.service, "compile_status", None)  # ImageService's; other services may lack it
        return f"Model ready ({self.service.label}" + (f"; transformer blocks {status}" if status else "") + ")."

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
        form = FormValues(
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
        )
        if form.randomize_seed is True:
            form = replace(form, seed=secrets.randbelow(RANDOM_SEED_LIMIT))
        try:
            req, notes = request_from_form(form)
        except ValueError as err:
            raise gr.Error(user_message(err)) from err
        for note in notes:
            gr.Info(note)
        result = self._run(req, _session_key(request), request, progress)
        if result is None:  # stopped: the outputs keep what they showed and the info box says so
            return self.stopped_outputs()
        return self._saved(req, result, notes)

    def _run(self, req, key: str, request, progress):
        """The request through the service under a stop signal of its own; None when it was stopped."""
        cancel = self.runs.start(key, request)
        try:
            result = self._generate(req, on_progress=self._progress_callback(progress), cancel=cancel)
            if cancel.is_set():  # stopped or gone during the last step or the decode: keep nothing
                raise GenerationCancelled("stopped after the last step")
            return result
        except GenerationCancelled:
            free_device_memory()
            return None  # Stop is not an error
        except Exception as err:
            free_device_memory()
            raise gr.Error(user_message(err)) from err
        finally:
            self.runs.end(key, cancel)

    def _saved(self, req, result, notes):
        """Each image saved as a PNG with its parameters; the event's outputs."""
        files = []
        for image, image_seed in zip(result.images, result.seeds, strict=True):
            text = parameters_text(req, image_seed, result.revised_prompt, self.service.label)
            files.append((str(self.outputs.save(image, image_seed, text)), f"seed {image_seed}"))
        info = run_info(result, notes, getattr(self.service, "provenance", None))
        return files, req.seed, result.revised_prompt or "", info

    async def stop(self, request: gr.Request):
        """Stop the session's runs: running ones after their current step, queued ones before they start."""
        key = _session_key(request)
        self.runs.stop_running(key)
        await drop_queued(request, key, list(self.stopped_outputs()))

    @staticmethod
    def stopped_outputs():
        """What a stopped run (running or queued) gives its outputs: gallery, seed and revised prompt keep what
        they show, the info box says Stopped."""
        return gr.skip(), gr.skip(), gr.skip(), STOPPED

    @staticmethod
    def validate(*inputs):
        """Checks the form (the generate event's inputs, in ``FORM_FIELDS`` order) before the run is queued: a
        refusal shows once, on the field it names (no error badges on the outputs), and API callers get the same
        message."""
        form = FormValues(*inputs)
        if form.randomize_seed is True:
            form = replace(form, seed=0)  # the handler draws a fresh seed; the typed one does not matter
        try:
            request_from_form(form)
        except ValueError as err:  # InvalidArgument names its field; anything else is shown on the prompt
            field = err.field if isinstance(err, InvalidArgument) else None
            marked = field if field in FORM_FIELDS else FORM_FIELDS[0]
            message = user_message(err)
            return [gr.validate(name != marked, message if name == marked else "") for name in FORM_FIELDS]
        return [gr.validate(True, "") for _ in FORM_FIELDS]

    @staticmethod
    def stopped():
        return STOPPED

    @staticmethod
    def apply_preset(preset):
        if preset == CUSTOM:
            return gr.skip(), gr.skip()
        width, height = map(int, preset.split("x"))
        return width, height

    @staticmethod
    def preset_for(width, height, choices=tuple(PRESETS)):
        """The dropdown's value for typed W/H: the matching preset, else ``custom``."""
        try:
            size = f"{int(width)}x{int(height)}"
        except (TypeError, ValueError):
            return CUSTOM
        return size if size in choices else CUSTOM

    def _history_item(self, entry) -> dict | None:
        """A history entry (file name in the output folder + the settings read back from its PNG), or None when
        the file is gone or the entry is not one this app wrote (the browser's storage is the client's)."""
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".png"):
            return None
        path = self.output_dir / name
        if not path.is_file():
            return None
        try:
            settings = read_png_parameters(path)
        except ValueError:
            return None
        return {"file": name, "settings": asdict(settings)}

    def _history_view(self, history):
        return [(str(self.output_dir / item["file"]), f"seed {item['settings']['seed']}") for item in history]

    def add_history(self, images, history):
        """Appends this run's images (newest first) to the browser-kept history; returns (state, gallery)."""
        history = self.load_history(history)
        known = {item["file"] for item in history}
        new = []
        for image in images or []:
            path = image[0] if isinstance(image, (list, tuple)) else image
            item = self._history_item({"file": Path(str(path)).name})
            if item is not None and item["file"] not in known:  # a stopped run leaves the last images shown
                new.append(item)
        history = (new[::-1] + history)[:HISTORY_LIMIT]
        return history, self._history_view(history)

    def load_history(self, history):
        """The entries of a stored history that still have their image here."""
        items = [self._history_item(entry) for entry in (history if isinstance(history, list) else [])]
        return [item for item in items if item is not None]

    def show_history(self, history):
        history = self.load_history(history)
        return history, self._history_view(history)

    @staticmethod
    def pick(event: gr.SelectData):
        return event.index

    @staticmethod
    def _fill_form(settings: dict):
        """Form updates (``RESTORED_FIELDS`` order) from saved settings; a missing value leaves its field alone,
        and a restored seed clears the randomize box (so the next run uses it)."""
        settings = {**settings, "randomize_seed": None if settings.get("seed") is None else False}
        return [gr.skip() if settings.get(name) is None else settings[name] for name in RESTORED_FIELDS]

    def use_history(self, history, index):
        history = self.load_history(history)
        if not isinstance(index, int) or not 0 <= index < len(history):
            gr.Info("Select an image in the history first.")
            return [gr.skip()] * len(RESTORED_FIELDS)
        return self._fill_form(history[index]["settings"])

    def restore_png(self, path):
        if not path:
            return [gr.skip()] * len(RESTORED_FIELDS)
        try:
            settings = read_png_parameters(path)
        except ValueError as err:
            gr.Warning(str(err))
            return [gr.skip()] * len(RESTORED_FIELDS)
        gr.Info("Settings restored from the PNG.")
        return self._fill_form(asdict(settings))

    def stats(self):
        """Package sizes, recorded benchmarks and live figures (JSON)."""
        return self.service.stats().to_dict()

    def refresh_stats(self):
        import pandas as pd

        data = self.service.stats()
        return stats_markdown(data), pd.DataFrame(size_rows(data), columns=["bar", "version", "GB"])


# Ctrl+Enter / Cmd+Enter in the prompt clicks Generate (capture phase: before the textbox sees the key).
KEYBOARD_JS = """
<script>
document.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.isComposing) return;
  if (!(event.target instanceof Element) || !event.target.closest("#prompt")) return;
  event.preventDefault();
  document.querySelector("#generate")?.click();
}, true);
</script>
"""

CSS = """
#actions { align-self: stretch; }
#actions button { min-height: 44px; }
#gallery { min-height: 320px; }
/* Phone: the result comes right after the prompt and Generate, the settings below it. */
@media (max-width: 768px) {
  #main { flex-direction: column; }
  #main > .column { min-width: 0 !important; width: 100%; }
  #results { order: -1; }
  #actions.column { flex-direction: row !important; }
  #gallery { min-height: 260px; }
}
"""


class ErnieBlocks(gr.Blocks):
    """``gr.Blocks`` that launches with the app's CSS, keyboard shortcut and translations (Gradio 6 takes these in
    ``launch()``); a caller's own values win."""

    def launch(self, *args, **kwargs):
        kwargs.setdefault("css", CSS)
        kwargs.setdefault("head", KEYBOARD_JS)
        kwargs.setdefault("i18n", I18N)
        return super().launch(*args, **kwargs)


def form_defaults(service) -> tuple[int, int, int, float]:
    """(width, height, steps, guidance) the form starts with: the variant's recommendation, or a small fast run
    when the service is the tiny random model (``--tiny``: an answer in seconds on a CPU)."""
    defaults = service.defaults
    config = getattr(service, "config", None)
    if config is not None and getattr(config, "tiny", False):
        return TINY_SIZE, TINY_SIZE, TINY_STEPS, defaults.guidance_scale
    return 1024, 1024, defaults.num_inference_steps, defaults.guidance_scale


def size_choices(width: int, height: int) -> list[str]:
    """The resolution dropdown's choices: the presets, the form's starting size when it is none of them, custom."""
    start = f"{width}x{height}"
    return [*PRESETS, *([start] if start not in PRESETS else []), CUSTOM]


# Layout: each function below builds one section inside the open Blocks and returns its components by name (the
# form's fields under their ``FormValues`` names).


def _prompt_row() -> dict:
    with gr.Row(elem_id="top", equal_height=True):
        prompt = gr.Textbox(
            label=t("prompt"), placeholder=t("prompt_placeholder"), lines=3, max_lines=12, scale=5, elem_id="prompt"
        )
        with gr.Column(scale=1, min_width=160, elem_id="actions"):
            run = gr.Button(t("generate"), variant="primary", elem_id="generate")
            stop = gr.Button(t("stop"), variant="stop", elem_id="stop")
    return {"prompt": prompt, "run": run, "stop": stop}


def _size_row(width: int, height: int, choices: list[str]) -> dict:
    with gr.Row():
        preset = gr.Dropdown(choices, value=f"{width}x{height}", label=t("resolution"), elem_id="preset")
        width_box = gr.Number(width, label=t("width"), precision=0, step=16, elem_id="width")
        height_box = gr.Number(height, label=t("height"), precision=0, step=16, elem_id="height")
    return {"preset": preset, "width": width_box, "height": height_box}


def _advanced(steps: int, guidance: float) -> dict:
    with gr.Accordion(t("advanced"), open=False, elem_id="advanced"):
        negative = gr.Textbox(label=t("negative"), lines=2, elem_id="negative")
        with gr.Row():
            steps_slider = gr.Slider(*STEPS_RANGE, value=steps, step=1, label=t("steps"), elem_id="steps")
            guidance_slider = gr.Slider(0.0, 15.0, value=guidance, step=0.1, label=t("guidance"), elem_id="guidance")
        with gr.Row():
            seed = gr.Number(1234, label=t("seed"), precision=0, elem_id="seed")
            randomize = gr.Checkbox(True, label=t("randomize"), elem_id="randomize")
        with gr.Row():
            use_pe = gr.Checkbox(True, label=t("pe"), elem_id="use-pe")
            count = gr.Slider(*IMAGES_RANGE, value=1, step=1, label=t("images"), elem_id="count")
        load = gr.Button(t("load"), size="sm")
        status = gr.Markdown("")
    return {
        "negative_prompt": negative,
        "num_inference_steps": steps_slider,
        "guidance_scale": guidance_slider,
        "seed": seed,
        "randomize_seed": randomize,
        "use_pe": use_pe,
        "num_images": count,
        "load": load,
        "status": status,
    }


def _examples(ui: dict) -> None:
    gr.Examples(
        [[prompt, width, height] for _, prompt, width, height in EXAMPLES],
        [ui["prompt"], ui["width"], ui["height"]],
        label=t("examples"),
        example_labels=[f"{title} · {width}×{height}" for title, _, width, height in EXAMPLES],
        cache_examples=False,
        examples_per_page=len(EXAMPLES),
        elem_id="examples",
    )


def _results() -> dict:
    with gr.Column(scale=3, elem_id="results"):
        gallery = gr.Gallery(
            label=t("result"),
            format="png",
            columns=2,
            interactive=False,
            buttons=["download", "fullscreen"],
            elem_id="gallery",
        )
        revised = gr.Textbox(label=t("revised"), interactive=False, elem_id="revised")
        info = gr.Textbox(label=t("run_info"), interactive=False, elem_id="info")
    return {"gallery": gallery, "revised": revised, "info": info}


def _reuse_row() -> dict:
    with gr.Row(elem_id="reuse"):
        with gr.Column(scale=3):
            history_state = gr.BrowserState([], storage_key="ernie-nf4-history")
            picked = gr.State(None)
            history = gr.Gallery(
                label=t("history"),
                columns=6,
                height=220,
                interactive=False,
                allow_preview=False,
                buttons=[],
                elem_id="history",
            )
            use_settings = gr.Button(t("use_settings"), size="sm", elem_id="use-settings")
        with gr.Column(scale=1, min_width=200):
            restore = gr.File(
                label=t("restore_png"), file_types=[".png"], type="filepath", height=140, elem_id="restore"
            )
    return {
        "history_state": history_state,
        "picked": picked,
        "history": history,
        "use_settings": use_settings,
        "restore": restore,
    }


def _generate_tab(width: int, height: int, steps: int, guidance: float, choices: list[str]) -> dict:
    ui = _prompt_row()
    with gr.Row(elem_id="main"):
        with gr.Column(scale=2, elem_id="settings"):
            ui |= _size_row(width, height, choices)
            ui |= _advanced(steps, guidance)
            _examples(ui)
        ui |= _results()
    ui |= _reuse_row()
    return ui


def _stats_tab() -> dict:
    with gr.Tab(t("tab_stats"), elem_id="stats-tab") as stats_tab:
        stats_md = gr.Markdown(elem_id="stats")
        chart = gr.BarPlot(
            x="bar",
            y="GB",
            color="version",
            sort=None,
            x_label_angle=-30,
            title="Original vs NF4 per component",
            elem_id="chart",
        )
        refresh = gr.Button(t("refresh"))
        stats_json = gr.JSON(visible=False)
    return {"stats_tab": stats_tab, "stats_md": stats_md, "chart": chart, "refresh": refresh, "stats_json": stats_json}


# Events: each function wires one part of the page to the handlers.
HIDDEN = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}


def _wire_generate(handlers: Handlers, ui: dict, concurrency: int) -> None:
    # preprocess=False: the API's raw values reach request_from_form, whose errors name the field and range.
    # The validator refuses a bad form before it is queued, with the message on the field it names.
    event = ui["run"].click(
        handlers.generate,
        [ui[name] for name in FORM_FIELDS],
        [ui["gallery"], ui["seed"], ui["revised"], ui["info"]],
        api_name="generate",
        concurrency_limit=concurrency,
        preprocess=False,
        validator=handlers.validate,
        show_progress="full",
        show_progress_on=ui["gallery"],
    )
    event.success(
        handlers.add_history,
        [ui["gallery"], ui["history_state"]],
        [ui["history_state"], ui["history"]],
        api_visibility="private",
        show_progress="hidden",
    )
    # Stop: the run's stop signal ends the work after its current step and the handler itself returns the
    # neutral "Stopped" result; the session's queued runs are removed. Not cancels=[event]: a run cancelled
    # through Gradio can leave an "Error" badge on the gallery (a race in Gradio 6.31's client).
    ui["stop"].click(handlers.stop, None, None, queue=False, api_visibility="private").then(
        handlers.stopped, None, ui["info"], queue=False, api_visibility="private", show_progress="hidden"
    )
    ui["load"].click(handlers.load_model, None, ui["status"], api_visibility="private")


def _wire_sizes(handlers: Handlers, ui: dict, choices: list[str]) -> None:
    ui["preset"].input(handlers.apply_preset, ui["preset"], [ui["width"], ui["height"]], **HIDDEN)
    follow = partial(handlers.preset_for, choices=tuple(choices))
    for size in (ui["width"], ui["height"]):
        size.change(follow, [ui["width"], ui["height"]], ui["preset"], **HIDDEN)


def _wire_reuse(handlers: Handlers, ui: dict, demo: gr.Blocks) -> None:
    restored = [ui[name] for name in RESTORED_FIELDS]
    history = [ui["history_state"], ui["history"]]
    demo.load(handlers.show_history, ui["history_state"], history, **HIDDEN)
    ui["history"].select(handlers.pick, None, ui["picked"], **HIDDEN)
    ui["use_settings"].click(handlers.use_history, [ui["history_state"], ui["picked"]], restored, **HIDDEN)
    ui["restore"].upload(handlers.restore_png, ui["restore"], restored, **HIDDEN)


def _wire_stats(handlers: Handlers, ui: dict, demo: gr.Blocks) -> None:
    ui["refresh"].click(handlers.stats, None, ui["stats_json"], api_name="stats")
    for trigger in (ui["refresh"].click, ui["stats_tab"].select, demo.load):
        trigger(handlers.refresh_stats, None, [ui["stats_md"], ui["chart"]], api_visibility="private")


def build_demo(service, output_dir: str | Path | OutputStore | None = None) -> gr.Blocks:
    """The UI around ``service`` (``ImageService`` or anything with its methods)."""
    handlers = Handlers(service, output_dir)
    width, height, steps, guidance = form_defaults(service)
    choices = size_choices(width, height)
    with ErnieBlocks(title="ERNIE-Image NF4") as demo:
        gr.Markdown(f"# ERNIE-Image NF4\nModel: **{service.label}**", elem_id="header")
        if (problem := service.unavailable_reason()) is not None:
            gr.Markdown(f"⚠️ **{problem}**", elem_id="missing")
        with gr.Tab(t("tab_generate")):
            ui = _generate_tab(width, height, steps, guidance, choices)
        ui |= _stats_tab()
        _wire_generate(handlers, ui, getattr(service, "replica_count", 1))
        _wire_sizes(handlers, ui, choices)
        _wire_reuse(handlers, ui, demo)
        _wire_stats(handlers, ui, demo)
    demo.queue(default_concurrency_limit=1)
    return demo
