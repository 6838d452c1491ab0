"""What the page's events call: ``Handlers`` holds the per-run stop signals and the output folder, and turns
Gradio's positional values into a ``FormValues`` as it receives them."""

from __future__ import annotations

import secrets
from dataclasses import asdict, fields, replace
from pathlib import Path

import gradio as gr

from ..errors import GenerationCancelled, InvalidArgument
from ..formatting import run_info
from ..progress import Progress
from ..request import FormValues, request_from_form
from ..system import free_device_memory
from .i18n import language
from .messages import STOPPED, user_message
from .outputs import DEFAULT_OUTPUT_DIR, OutputStore
from .png_params import FormSettings, parameters_text, read_png_parameters
from .runs import RunRegistry, drop_queued
from .stats_view import CHART_COLUMNS, chart_rows, chart_titles, load_answer, stats_markdown
from .zerogpu import decorator as zerogpu_decorator
from .zerogpu import gpu_generate

# The model card's recommended sizes (about one megapixel each), square first, then each portrait with its landscape.
PRESETS = ["1024x1024", "896x1200", "1200x896", "848x1264", "1264x848", "768x1376", "1376x768"]
CUSTOM = "custom"
RANDOM_SEED_LIMIT = 2**32
HISTORY_LIMIT = 48
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

    def load_model(self, request: gr.Request, progress=gr.Progress()):
        """Loads the model now; answers, in the browser's language, where the models live and how long it took."""
        try:
            self.service.load(self._progress_callback(progress))
        except Exception as err:
            raise gr.Error(user_message(err)) from err
        return load_answer(self.service.stats().live, language(request))

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
    def swap(width, height):
        """The size turned a quarter: (height, width) into the (width, height) fields."""
        return height, width

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
        """Package sizes, the cards it fits, recorded benchmarks and live figures (JSON)."""
        return self.service.stats().to_dict()

    def refresh_stats(self, request: gr.Request):
        """The Stats tab in the browser's language: the text, and the chart with its titles."""
        import pandas as pd

        lang, data = language(request), self.service.stats()
        rows = pd.DataFrame(chart_rows(data, lang), columns=CHART_COLUMNS)
        chart = gr.BarPlot(rows, sort=list(rows[CHART_COLUMNS[0]]), **chart_titles(lang))  # bars in package order
        return stats_markdown(data, lang), chart
