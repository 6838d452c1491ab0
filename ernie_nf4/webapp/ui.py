"""The UI: ``build_demo(service)`` lays out the page (``layout``) around any object with ``ImageService``'s
methods and wires its events to ``Handlers``."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import gradio as gr

from .api_page import document_api
from .handlers import FORM_FIELDS, RESTORED_FIELDS, Handlers
from .i18n import t
from .layout import form_defaults, generate_tab, is_tiny, size_choices, stats_tab
from .outputs import OutputStore
from .theme import ErnieBlocks

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
    ui["swap"].click(handlers.swap, [ui["width"], ui["height"]], [ui["width"], ui["height"]], **HIDDEN)
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
        with gr.Tab(t("tab_create")):
            ui = generate_tab(width, height, steps, guidance, choices, sized_examples=not is_tiny(service))
        ui |= stats_tab()
        _wire_generate(handlers, ui, getattr(service, "replica_count", 1))
        _wire_sizes(handlers, ui, choices)
        _wire_reuse(handlers, ui, demo)
        _wire_stats(handlers, ui, demo)
    demo.queue(default_concurrency_limit=1)
    document_api(demo)
    return demo
