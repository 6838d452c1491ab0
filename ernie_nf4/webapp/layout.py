"""The page's sections: each function builds one part inside the open Blocks and returns its components by name
(the form's fields under their ``FormValues`` names)."""

from __future__ import annotations

from math import gcd

import gradio as gr

from ..request import GUIDANCE_RANGE, IMAGES_RANGE, LORA_SCALE_RANGE, MAX_LORAS, STEPS_RANGE, STRENGTH_RANGE
from .examples import EXAMPLES
from .handlers import CUSTOM, FOLLOW_UP_BUTTONS, PRESETS
from .i18n import t
from .stats_view import chart_columns, chart_titles

TINY_SIZE, TINY_STEPS = 256, 4
# Aspect ratios with a common name, landscape side first; a size within RATIO_TOLERANCE of one is called by it.
NAMED_RATIOS = ((1, 1), (5, 4), (4, 3), (3, 2), (16, 9), (21, 9))
RATIO_TOLERANCE = 0.02
HISTORY_STORAGE_KEY = "ernie-nf4-history"  # the browser's storage entry that keeps the history


def is_tiny(service) -> bool:
    """Whether the service is the tiny random model (``--tiny``)."""
    config = getattr(service, "config", None)
    return config is not None and bool(getattr(config, "tiny", False))


def form_defaults(service) -> tuple[int, int, int, float]:
    """(width, height, steps, guidance) the form starts with: the variant's recommendation, or a small fast run
    when the service is the tiny random model (``--tiny``: an answer in seconds on a CPU)."""
    defaults = service.defaults
    if is_tiny(service):
        return TINY_SIZE, TINY_SIZE, TINY_STEPS, defaults.guidance_scale
    return 1024, 1024, defaults.num_inference_steps, defaults.guidance_scale


def ratio_name(width: int, height: int) -> str:
    """The size's aspect ratio as people call it: the named ratio it is within 2 % of (848x1264 is 0.671, so
    "2:3"), else the reduced fraction."""
    for long, short in NAMED_RATIOS:
        for w, h in ((long, short), (short, long)):
            if abs((width / height) / (w / h) - 1) <= RATIO_TOLERANCE:
                return f"{w}:{h}"
    common = gcd(width, height)
    return f"{width // common}:{height // common}"


def size_label(size: str) -> str:
    """A dropdown label for ``"WxH"``: "2:3 · 848×1264"."""
    width, height = map(int, size.split("x"))
    return f"{ratio_name(width, height)} · {width}×{height}"


def size_choices(width: int, height: int) -> list[str]:
    """The resolution dropdown's values: the presets, the form's starting size when it is none of them, custom."""
    start = f"{width}x{height}"
    return [*PRESETS, *([start] if start not in PRESETS else []), CUSTOM]


def _prompt_row() -> dict:
    with gr.Row(elem_id="top", equal_height=True):
        prompt = gr.Textbox(
            label=t("prompt"),
            placeholder=t("prompt_placeholder"),
            lines=3,
            max_lines=12,
            scale=5,
            buttons=["copy"],
            elem_id="prompt",
        )
        with gr.Column(scale=1, min_width=160, elem_id="actions"):
            run = gr.Button(t("generate"), variant="primary", elem_id="generate")
            stop = gr.Button(t("stop"), variant="stop", elem_id="stop")
            enhance = gr.Button(t("enhance_first"), elem_id="enhance-first")
    return {"prompt": prompt, "run": run, "stop": stop, "enhance": enhance}


def _enhanced_row() -> dict:
    """The PE's text for the prompt (Enhance first), in a box to edit, which Generate then uses as it is (empty: the
    PE writes it during the run), and the button that clears it; shown once there is text (``ui._wire_enhance``)."""
    with gr.Row(elem_id="enhance", equal_height=True, visible=False) as row:
        box = gr.Textbox(
            label=t("enhanced"),
            placeholder=t("enhanced_placeholder"),
            lines=2,
            max_lines=8,
            scale=5,
            min_width=160,
            elem_id="enhanced",
        )
        with gr.Column(scale=1, min_width=120, elem_id="enhance-actions"):
            clear = gr.Button(t("clear_enhanced"), size="sm", elem_id="clear-enhanced")
    return {"enhanced_prompt": box, "enhance_row": row, "clear_enhanced": clear}


def _size_row(width: int, height: int, choices: list[str]) -> dict:
    """The resolution dropdown, then width ⇄ height: one line on a desktop, two on a phone (never Height alone)."""
    named = [(t("custom") if size == CUSTOM else size_label(size), size) for size in choices]
    with gr.Row(elem_id="size"):
        preset = gr.Dropdown(
            named, value=f"{width}x{height}", label=t("resolution"), scale=3, min_width=170, elem_id="preset"
        )
        with gr.Column(scale=4, min_width=230), gr.Row(elem_id="dimensions"):
            width_box = gr.Number(width, label=t("width"), precision=0, step=16, min_width=80, elem_id="width")
            swap = gr.Button("⇄", size="sm", scale=0, min_width=44, elem_id="swap")
            height_box = gr.Number(height, label=t("height"), precision=0, step=16, min_width=80, elem_id="height")
    return {"preset": preset, "width": width_box, "swap": swap, "height": height_box}


def _lora_row(names: list[str]) -> dict:
    """The LoRAs the app offers (several at once) and their scale; hidden when it offers none."""
    with gr.Row(elem_id="loras", visible=bool(names)):
        lora = gr.Dropdown(
            names,
            value=[],
            multiselect=True,
            max_choices=MAX_LORAS,
            label=t("lora"),
            scale=1,
            min_width=170,
            elem_id="lora",
        )
        scale = gr.Slider(
            *LORA_SCALE_RANGE, value=1.0, step=0.05, label=t("lora_scale"), scale=1, min_width=170, elem_id="lora-scale"
        )
    return {"lora": lora, "lora_scale": scale}


def _image_to_image() -> dict:
    """The image to start from (upload, paste, or a result's "Use this result") and the strength; closed until
    opened, and strength 1 ignores the image."""
    with gr.Accordion(t("img2img"), open=False, elem_id="img2img") as section:
        image = gr.Image(
            label=t("init_image"),
            type="filepath",
            sources=["upload", "clipboard"],
            height=220,
            elem_id="init-image",
        )
        strength = gr.Slider(*STRENGTH_RANGE, value=1.0, step=0.05, label=t("strength"), elem_id="strength")
    return {"img2img": section, "init_image": image, "strength": strength}


def _advanced(steps: int, guidance: float) -> dict:
    with gr.Accordion(t("advanced"), open=False, elem_id="advanced"):
        negative = gr.Textbox(label=t("negative"), lines=2, elem_id="negative")
        with gr.Row():
            steps_slider = gr.Slider(*STEPS_RANGE, value=steps, step=1, label=t("steps"), elem_id="steps")
            guidance_slider = gr.Slider(
                *GUIDANCE_RANGE, value=guidance, step=0.1, label=t("guidance"), elem_id="guidance"
            )
        with gr.Row():
            seed = gr.Number(1234, label=t("seed"), precision=0, elem_id="seed")
            randomize = gr.Checkbox(True, label=t("randomize"), elem_id="randomize")
        with gr.Row():
            use_pe = gr.Checkbox(True, label=t("pe"), elem_id="use-pe")
            count = gr.Slider(*IMAGES_RANGE, value=1, step=1, label=t("images"), elem_id="count")
        previews = gr.Checkbox(True, label=t("live_previews"), elem_id="previews")
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
        "previews": previews,
    }


def _examples(ui: dict, sized: bool) -> None:
    """The example prompts; ``sized``: each also sets its size (not on the tiny model, whose small size keeps a run
    to seconds on a CPU)."""
    if sized:
        rows = [[prompt, width, height] for _, prompt, width, height in EXAMPLES]
        labels = [f"{title} · {width}×{height}" for title, _, width, height in EXAMPLES]
    else:
        rows, labels = [[prompt] for _, prompt, _, _ in EXAMPLES], [title for title, *_ in EXAMPLES]
    gr.Examples(
        rows,
        [ui["prompt"], ui["width"], ui["height"]][: len(rows[0])],
        label=t("examples"),
        example_labels=labels,
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
            object_fit="contain",
            interactive=False,
            buttons=["download", "fullscreen"],
            elem_id="gallery",
        )
        # off until the gallery holds a run's images (the gallery's change event turns them on)
        use_result = gr.Button(t("use_result"), size="sm", interactive=False, elem_id="use-result")
        follow_ups = _follow_up_row()
        revised = gr.Textbox(
            label=t("revised"),
            interactive=False,
            lines=2,
            max_lines=6,
            autoscroll=False,
            buttons=["copy"],
            elem_id="revised",
        )
        info = gr.Textbox(label=t("run_info"), interactive=False, elem_id="info")
    return {"gallery": gallery, "use_result": use_result, "revised": revised, "info": info} | follow_ups


def _follow_up_row() -> dict:
    """Vary (subtle, strong) and Upscale x2 of the selected result, one line on a phone too; and the hidden file
    that carries the result to their runs (their API's one input)."""
    with gr.Row(elem_id="follow-ups"):
        buttons = {
            name: gr.Button(t(name), size="sm", min_width=90, interactive=False, elem_id=name.replace("_", "-"))
            for name in FOLLOW_UP_BUTTONS
        }
    image = gr.File(label=t("follow_up_image"), type="filepath", visible=False, elem_id="follow-up-image")
    return buttons | {"follow_up_image": image}


def _reuse_row(history_secret: str | None) -> dict:
    """The history (kept in the browser, encrypted with ``history_secret``), Use settings, the restore box."""
    with gr.Row(elem_id="reuse"):
        with gr.Column(scale=3):
            # None until read from the browser's storage: as when there is none, or it cannot be decrypted (the
            # hidden box then tells the two apart: ``ui.HISTORY_STORED_JS``)
            history_state = gr.BrowserState(None, storage_key=HISTORY_STORAGE_KEY, secret=history_secret)
            history_stored = gr.Checkbox(False, visible=False)
            # the picked image's index: a component of the page, not a State, so that Use settings sends the page's
            # own selection (``ui.picked_js``)
            picked = gr.Number(None, precision=0, visible=False)
            history = gr.Gallery(
                label=t("history"),
                columns=6,
                height=300,
                object_fit="contain",
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
            # out of sight (CSS): clicked as a file is dropped or picked on the box (``ui.WATCH_RESTORE_JS``)
            restore_given = gr.Button("restore-given", elem_id="restore-given")
    return {
        "history_state": history_state,
        "history_stored": history_stored,
        "picked": picked,
        "history": history,
        "use_settings": use_settings,
        "restore": restore,
        "restore_given": restore_given,
    }


def generate_tab(
    width: int,
    height: int,
    steps: int,
    guidance: float,
    choices: list[str],
    sized_examples: bool = True,
    lora_names: list[str] = (),
    history_secret: str | None = None,
) -> dict:
    """The Create tab's sections; ``history_secret``: what the browser encrypts the history with (None: a new one
    per start, as Gradio makes)."""
    ui = _prompt_row()
    ui |= _enhanced_row()
    with gr.Row(elem_id="main"):
        with gr.Column(scale=2, elem_id="settings"):
            ui |= _size_row(width, height, choices)
            ui |= _lora_row(list(lora_names))
            ui |= _image_to_image()
            ui |= _advanced(steps, guidance)
            _examples(ui, sized_examples)
        ui |= _results()
    ui |= _reuse_row(history_secret)
    return ui


def stats_tab() -> dict:
    """The Stats tab: its text and chart are filled in the page's language (``Handlers.refresh_stats``); the
    hidden JSON is the ``/stats`` API's return."""
    with gr.Tab(t("tab_stats"), elem_id="stats-tab") as stats_tab:
        stats_md = gr.Markdown(elem_id="stats")
        bar, size, kind = chart_columns()  # the kind's column is named in the page's language at its first refresh
        chart = gr.BarPlot(
            x=bar,
            y=size,
            color=kind,
            sort=None,
            x_label_angle=-90,
            height=480,  # room for the upright labels below the bars
            elem_id="chart",
            **chart_titles(),  # English until the page's first refresh, which follows its language
        )
        refresh = gr.Button(t("refresh"))
        stats_json = gr.JSON(visible=False, label=t("stats_json"))
    return {"stats_tab": stats_tab, "stats_md": stats_md, "chart": chart, "refresh": refresh, "stats_json": stats_json}
