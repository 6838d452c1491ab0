"""The UI: ``build_demo(service)`` lays out the page (``layout``) around any object with ``ImageService``'s
methods and wires its events to ``Handlers``."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from ..serving.service import NO_GPU_MESSAGE
from .api_page import document_api
from .handlers import FOLLOW_UP_BUTTONS, FORM_FIELDS, RESTORED_FIELDS, RESULT_BUTTONS, Handlers
from .i18n import example_label, language, preview_prefixes, say, t
from .layout import HISTORY_STORAGE_KEY, form_defaults, generate_tab, is_tiny, size_choices, stats_tab
from .outputs import OutputStore
from .theme import ErnieBlocks

# Events: each function wires one part of the page to the handlers.
HIDDEN = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}

# Stop is enabled while this tab has runs going or waiting: a count kept in the tab, one up when a checked form goes
# to the queue, one down when its run ends (done, stopped, refused or failed). A run's results come in the language
# the page had when it was queued: when the page changed language meanwhile, the hidden #relang button is clicked
# as it ends, to say them in the new one.
_BUSY = "{__type__: 'update', interactive: true, variant: 'stop'}"
_IDLE = "{__type__: 'update', interactive: false, variant: 'secondary'}"
RUN_QUEUED_JS = (
    "() => { window.ernieRuns = (window.ernieRuns || 0) + 1; window.ernieRunLang = document.documentElement.lang;"
    f" return {_BUSY}; }}"
)
RUN_ENDED_JS = (
    "() => { window.ernieRuns = Math.max(0, (window.ernieRuns || 0) - 1);"
    " if (window.ernieRunLang !== undefined && window.ernieRunLang !== document.documentElement.lang)"
    " { window.ernieRunLang = document.documentElement.lang; document.querySelector('#relang')?.click(); }"
    f" return window.ernieRuns > 0 ? {_BUSY} : {_IDLE}; }}"
)
# After Generate, a refusal shown on its field is brought into sight: the section it is in opened when closed, the
# field scrolled to (on a phone the size fields are a screen below the button). Only a message that comes after the
# click counts (Gradio shows a new one, and takes an earlier one away, within a second; it is looked for during 15 s).
# Wired before the run's events: a refused form ends the click's later events.
SHOW_REFUSAL_JS = """() => {
  const messages = () => [...document.querySelectorAll('div.validation-error')].filter((e) => e.textContent.trim());
  const earlier = new Set(messages());
  let tries = 0;
  const look = () => {
    const shown = messages().find((e) => !earlier.has(e));
    if (!shown) { if (++tries < 150) setTimeout(look, 100); return; }
    const section = shown.closest('.gr-accordion');
    const visible = shown.checkVisibility ? shown.checkVisibility() : shown.offsetParent !== null;
    if (section && !visible) section.querySelector(':scope > button.label-wrap')?.click();
    setTimeout(() => shown.closest('.block')?.scrollIntoView({block: 'center'}), 100);
  };
  setTimeout(look, 100);
}"""
# The buttons that take a result (Use this result, Vary, Upscale) are on while the gallery holds a run's images, off
# while it is empty or shows a live preview.
RESULTS_SHOWN_JS = (
    (
        "(gallery) => { const previews = PREFIXES;"
        " const on = (gallery || []).length > 0"
        " && !(gallery || []).some((item) => previews.some((p) => String(item?.caption || '').startsWith(p)));"
        " return Array(COUNT).fill({__type__: 'update', interactive: on}); }"
    )
    .replace("PREFIXES", json.dumps(preview_prefixes(), ensure_ascii=False))
    .replace("COUNT", str(len(RESULT_BUTTONS)))
)


def _checked(ui: dict, button: str, fn, inputs: list, outputs, validator):
    """The button's click checked first, in a queue lane of its own (never behind the runs): ``validator`` shows a
    refusal on the field it names (brought into sight), else ``fn`` runs and Stop goes on. Returns the check's event:
    the run follows on its success."""
    ui[button].click(None, js=SHOW_REFUSAL_JS, queue=False, api_visibility="private")
    checked = ui[button].click(
        fn,
        inputs,
        outputs,
        validator=validator,
        preprocess=False,  # as the run's: a file that is no image is refused on its field, not failed in Gradio
        trigger_mode="multiple",
        concurrency_limit=None,
        concurrency_id="form",
        api_visibility="private",
        show_progress="hidden",
    )
    checked.success(None, None, ui["stop"], js=RUN_QUEUED_JS, queue=False, api_visibility="private")
    return checked


def _wire_generate(handlers: Handlers, ui: dict, concurrency: int) -> None:
    form = [ui[name] for name in FORM_FIELDS]
    # Generate first checks the form in a queue lane of its own (never behind the runs), with the message on the
    # field it names; a form it takes shows the size the run will use (typed 1000, the field says 1008) and goes
    # to the runs' queue. Every click counts (trigger_mode="multiple"): one right after Stop runs once the stopped
    # run has ended.
    checked = _checked(ui, "run", handlers.snapped_size, form, [ui["width"], ui["height"]], handlers.validate)
    # preprocess=False: the API's raw values reach request_from_form, whose errors name the field and range.
    # The validator refuses a bad form (for API callers) before it is queued.
    event = checked.success(
        handlers.generate_live,
        form,
        [ui["gallery"], ui["seed"], ui["revised"], ui["info"], ui["made"]],
        api_name="generate",
        concurrency_limit=concurrency,
        preprocess=False,
        validator=handlers.validate,
        trigger_mode="multiple",
        show_progress="full",
        show_progress_on=ui["gallery"],
    )
    _after_run(event, handlers, ui)
    # Stop: the run's stop signal ends the work after its current step and the handler itself returns the
    # neutral "Stopped" result; the session's queued runs are removed. Not cancels=[event]: a run cancelled
    # through Gradio can leave an "Error" badge on the gallery (a race in Gradio 6.31's client).
    ui["stop"].click(handlers.stop, None, None, queue=False, api_visibility="private")
    ui["load"].click(handlers.load_model, None, ui["status"], api_visibility="private")


def picked_js(gallery_id: str) -> str:
    """For an event whose 2nd input is the gallery ``gallery_id``'s picked index (a hidden number): the index of the
    thumbnail the page shows selected, or null when none is. The page's own selection, sent with the click: nothing
    of the server's can lag behind it (a select event's answer could come after a quick hand's button)."""
    items = f"#{gallery_id} button.thumbnail-item"
    return f"""(...inputs) => {{
    const shown = document.querySelector('{items}.selected');
    inputs[1] = null;
    if (!shown) return inputs;
    const size = shown.classList.contains('thumbnail-small') ? '.thumbnail-small' : '.thumbnail-lg';  // strip, grid
    inputs[1] = [...document.querySelectorAll('{items}' + size)].indexOf(shown);
    return inputs;
}}"""


# The prompt box's own input events (typing, paste, drop, cut; never a value the app sets) mark it edited; the
# prompt's change then empties the enhanced box once.
WATCH_PROMPT_EDITS_JS = """() => {
  document.addEventListener('input', (e) => {
    if (e.target.closest?.('#prompt')) window.erniePromptEdited = true;
  }, true);
}"""
# Each emptying of the enhanced box counts a new form (``ernieForm``); each Enhance first that starts notes the form
# it writes for, and its text, once written, is kept only if the form is still that one: a text for the prompt or
# size changed meanwhile is dropped, as the change dropped the box's.
NEW_FORM = "window.ernieForm = (window.ernieForm || 0) + 1;"
CLEAR_JS = f"() => {{ {NEW_FORM} return ''; }}"
CLEAR_IF_EDITED_JS = f"""(box) => {{
  const edited = window.erniePromptEdited;
  window.erniePromptEdited = false;
  if (edited) {{ {NEW_FORM} }}
  return edited ? '' : box;
}}"""
ENHANCE_STARTS_JS = """(...inputs) => {
  (window.ernieEnhancing ||= []).push(window.ernieForm || 0);
  return inputs;
}"""
ENHANCE_ENDED_JS = """(box) => {
  const form = (window.ernieEnhancing ||= []).shift();
  return form === undefined || form === (window.ernieForm || 0) ? box : '';
}"""
SHOW_IF_TEXT_JS = "(text) => ({__type__: 'update', visible: !!text})"


def _wire_enhance(handlers: Handlers, ui: dict, demo: gr.Blocks, concurrency: int) -> None:
    """Enhance first runs the PE alone into the enhanced prompt's box (``/enhance``), with Stop on while it writes;
    the box shows while it holds text. It is emptied by its Clear button and when the prompt or the size is changed
    by hand or by an example (the PE wrote it for those); a new seed leaves it (a run with its text never runs the
    PE)."""
    box = ui["enhanced_prompt"]
    inputs = [ui["prompt"], ui["width"], ui["height"], ui["seed"]]
    # As Generate: the inputs checked first, a refusal shown on its field (an error from the run itself would cover
    # the prompt box, where its progress shows), then the PE's run in its own queue lane.
    checked = _checked(ui, "enhance", lambda *_: None, inputs, None, handlers.validate_enhance)
    event = checked.success(
        handlers.enhance,
        inputs,
        box,
        js=ENHANCE_STARTS_JS,
        api_name="enhance",
        concurrency_limit=concurrency,
        concurrency_id="enhance",
        preprocess=False,  # the API's raw values reach request_from_form, whose errors name the field
        validator=handlers.validate_enhance,
        trigger_mode="multiple",
        show_progress="full",
        show_progress_on=ui["prompt"],  # the box shows only once it has text
    )
    for ended in (event.then, event.failure):
        ended(None, None, ui["stop"], js=RUN_ENDED_JS, queue=False, api_visibility="private")
    event.then(None, box, box, js=ENHANCE_ENDED_JS, queue=False, api_visibility="private")
    changed = [ui["width"].input, ui["height"].input, ui["preset"].input, ui["swap"].click]
    for trigger in [ui["clear_enhanced"].click, *changed]:
        trigger(None, None, box, js=CLEAR_JS, queue=False, api_visibility="private")
    # the prompt edited in its box in any way (typed, pasted, dropped, cut); not when the app sets it (an example, a
    # restored PNG, History), which sets the box as it should be
    demo.load(None, js=WATCH_PROMPT_EDITS_JS)
    ui["prompt"].change(None, box, box, js=CLEAR_IF_EDITED_JS, queue=False, api_visibility="private")
    # the box and its Clear button show while it holds text (from Enhance first or a restored PNG)
    box.change(None, box, ui["enhance_row"], js=SHOW_IF_TEXT_JS, queue=False, api_visibility="private")


# The size turned a quarter, in the page: whatever the boxes hold (a size out of range too) changes places.
SWAP_JS = "(width, height) => [height, width]"


def _wire_sizes(handlers: Handlers, ui: dict, choices: list[str]) -> None:
    """The size's events: a preset fills the boxes, ⇄ swaps them, the boxes pick the preset they match (any number
    typed in them, out of range too: Generate's check names it)."""
    sizes = [ui["width"], ui["height"]]
    ui["preset"].input(handlers.apply_preset, ui["preset"], sizes, **HIDDEN)
    ui["swap"].click(None, sizes, sizes, js=SWAP_JS, queue=False, api_visibility="private")

    def preset_for(width, height):
        return handlers.preset_for(width, height, tuple(choices))

    for size in sizes:
        size.change(preset_for, sizes, ui["preset"], **HIDDEN)


# A file dropped or picked on the restore box empties the note under the history at once, before the browser checks
# it: one it refuses (not a PNG, too large) never reaches the server, and the note about the last file must not stay;
# one it takes gets its own note from the server. Through the hidden #restore-given button, whose event empties it as
# Gradio sets a value (the next note then shows, even when its text is the same). A file Gradio refuses (wrong type,
# too large, an upload the server turns away) is said in its popup, and the red "Error" badge it puts over the box
# is cleared at once through the badge's own × (Gradio's clear_status), so that the box takes the next file.
WATCH_RESTORE_JS = """() => {
  const given = (e) => {
    if (e.target.closest?.('#restore')) document.querySelector('#restore-given')?.click();
  };
  document.addEventListener('drop', given, true);
  document.addEventListener('change', given, true);
  new MutationObserver(() => {
    document.querySelector('#restore [data-testid=status-tracker] .clear-status button')?.click();
  }).observe(document.body, {subtree: true, childList: true});
}"""


# The history as the page opens, and whether the browser holds a stored one: with none read from it (null), the one
# stored could not be decrypted.
HISTORY_STORED_JS = f"(history, stored) => [history, localStorage.getItem({HISTORY_STORAGE_KEY!r}) !== null]"


def _wire_reuse(handlers: Handlers, ui: dict, demo: gr.Blocks) -> None:
    # Their messages go into the note under the history (a popup from an event outside the queue never arrives).
    restored = [ui[name] for name in RESTORED_FIELDS]
    history = [ui["history_state"], ui["history"], ui["note"]]
    examples = next(b for b in demo.blocks.values() if isinstance(b, gr.Dataset) and b.elem_id == "examples")
    for written in _page_written(demo, ui):  # the texts the server writes, in the page's language
        stored = [ui["history_state"], ui["history_stored"]]
        written(handlers.show_history, stored, history, js=HISTORY_STORED_JS, **HIDDEN)
        written(_example_labels(list(examples.sample_labels or [])), None, examples, **HIDDEN)
    # the last results' captions and run info, said again in the page's new language
    ui["relang"].click(handlers.relang, [ui["gallery"], ui["info"]], [ui["gallery"], ui["info"]], **HIDDEN)
    examples.click(None, None, ui["enhanced_prompt"], js=CLEAR_JS, queue=False, api_visibility="private")
    ui["use_settings"].click(
        handlers.use_history,
        [ui["history_state"], ui["picked"]],
        [*restored, ui["note"]],
        js=picked_js("history"),
        **HIDDEN,
    )
    ui["restore"].upload(handlers.restore_png, ui["restore"], [*restored, ui["restore"], ui["note"]], **HIDDEN)
    demo.load(None, js=WATCH_RESTORE_JS)
    ui["restore_given"].click(None, None, ui["note"], js="() => ''", queue=False, api_visibility="private")


def _wire_image_to_image(handlers: Handlers, ui: dict) -> None:
    """The result gallery's selection, "Use this result", and the strength following the image input."""
    ui["result_picked"] = gr.Number(None, precision=0, visible=False)  # as the history's ``picked``
    # new images (a run's, or its previews) turn the buttons that take a result on or off, in the page (an event of
    # the server's that reads the gallery would cover the run's progress over it)
    buttons = [ui[name] for name in RESULT_BUTTONS]
    ui["gallery"].change(None, ui["gallery"], buttons, js=RESULTS_SHOWN_JS, queue=False, api_visibility="private")
    ui["use_result"].click(
        handlers.use_result,
        [ui["gallery"], ui["result_picked"], ui["strength"]],
        [ui["init_image"], ui["strength"], ui["note"], ui["img2img"]],
        js=picked_js("gallery"),
        **HIDDEN,
    )
    # raw: whether a file came is all it asks (a file that is no image is refused by Generate, on its field)
    given = {**HIDDEN, "preprocess": False}
    ui["init_image"].input(handlers.image_given, [ui["init_image"], ui["strength"]], ui["strength"], **given)


def _buttons_at_rest(ui: dict, problem: str | None) -> None:
    """Stop starts off and plain (the events turn it on while a run goes); Generate is off when runs cannot go."""
    ui["stop"].interactive, ui["stop"].variant = False, "secondary"
    if problem is not None:
        ui["run"].interactive = False


def _page_written(demo: gr.Blocks, ui: dict) -> tuple:
    """When the server writes its texts on the page: as it opens, and when its language changes (Gradio's Settings),
    which clicks the hidden #relang button (``theme.LANGUAGE_JS``)."""
    return demo.load, ui["relang"].click


def _example_labels(labels: list[str]):
    """The event that gives the examples' labels in the page's language."""

    def translated(request: gr.Request):
        lang = language(request)
        return gr.Dataset(sample_labels=[example_label(label, lang) for label in labels])

    return translated


def _wire_stats(handlers: Handlers, ui: dict, demo: gr.Blocks) -> None:
    ui["refresh"].click(handlers.stats, None, ui["stats_json"], api_name="stats")
    shown = [ui["stats_md"], ui["chart"]]
    opened, new_language = _page_written(demo, ui)
    for trigger in (ui["refresh"].click, ui["stats_tab"].select, opened):
        trigger(handlers.refresh_stats, None, shown, api_visibility="private")
    # In a new language the chart is drawn anew: Gradio's chart, redrawn in place for new titles, keeps its old rows
    hidden = new_language(lambda: gr.BarPlot(visible=False), None, ui["chart"], **HIDDEN)
    hidden.then(handlers.refresh_stats, None, shown, api_visibility="private")


def _page_words(service):
    """The event that gives the header and the no-GPU line in the page's language."""

    def words(lang: str) -> tuple[str, str]:
        model = say("model_tiny", lang) if is_tiny(service) else service.label
        problem = service.unavailable_reason()
        if problem == NO_GPU_MESSAGE:
            problem = say("no_gpu_reason", lang)
        return say(
            "header", lang, model=model
        ), "" if problem is None else f"⚠️ **{say('no_gpu', lang, reason=problem)}**"

    def translated(request: gr.Request):
        return words(language(request))

    return words, translated


def build_demo(
    service, output_dir: str | Path | OutputStore | None = None, history_key: bytes | None = None
) -> gr.Blocks:
    """The UI around ``service`` (``ImageService`` or anything with its methods). ``history_key``: the key the
    browsers' histories are signed and kept with (``history.load_key``); without one, a new key for this build:
    histories kept before it can no longer be read."""
    handlers = Handlers(service, output_dir, history_key=history_key)
    width, height, steps, guidance = form_defaults(service)
    choices = size_choices(width, height)
    with ErnieBlocks(title="ERNIE-Image NF4") as demo:
        words, translated = _page_words(service)
        header_text, missing_text = words("en")
        header = gr.Markdown(header_text, elem_id="header")
        relang = gr.Button("relang", elem_id="relang")  # out of sight (CSS): clicked as the page's language changes
        with gr.Tab(t("tab_create")):
            problem = service.unavailable_reason()
            # said right above Generate, which is off
            missing = gr.Markdown(missing_text, elem_id="missing", visible=problem is not None)
            sized = not is_tiny(service)
            secret = handlers.history.browser_secret
            ui = generate_tab(width, height, steps, guidance, choices, sized, handlers.lora_names, secret)
            ui["note"] = gr.Markdown("", elem_id="history-note")
        ui |= stats_tab()
        ui["made"] = gr.State([])  # the last run's history entries, signed when its images were made
        ui["relang"] = relang
        _buttons_at_rest(ui, problem)
        _wire_generate(handlers, ui, getattr(service, "replica_count", 1))
        _wire_enhance(handlers, ui, demo, getattr(service, "replica_count", 1))
        _wire_sizes(handlers, ui, choices)
        _wire_reuse(handlers, ui, demo)
        _wire_image_to_image(handlers, ui)
        _wire_stats(handlers, ui, demo)
        _wire_follow_ups(handlers, ui, demo, getattr(service, "replica_count", 1))
        for written in _page_written(demo, ui):
            written(translated, None, [header, missing], **HIDDEN)
    demo.queue(default_concurrency_limit=1)
    document_api(demo)
    return demo


def _after_run(event, handlers: Handlers, ui: dict) -> None:
    """What follows a run's event, however it ends: Stop off again, and a finished run's images into the history."""
    for ended in (event.then, event.failure):
        ended(None, None, ui["stop"], js=RUN_ENDED_JS, queue=False, api_visibility="private")
    event.success(
        handlers.add_history,
        [ui["made"], ui["history_state"]],
        [ui["history_state"], ui["history"], ui["note"]],
        api_visibility="private",
        show_progress="hidden",
    )


def _checked_result(handlers: Handlers, kind: str):
    """The event that picks the result for ``kind`` and refuses it (a popup) before anything is queued."""

    def picked(gallery, index, request: gr.Request):
        return handlers.result_for(kind, gallery, index, language(request))

    picked.__name__ = f"{kind}_result"
    return picked


def _wire_follow_ups(handlers: Handlers, ui: dict, demo: gr.Blocks, concurrency: int) -> None:
    """Vary (subtle, strong) and Upscale x2: one click puts the result gallery's selected image in the hidden file
    and runs it (``/vary_subtle``, ``/vary_strong``, ``/upscale``) as Generate runs: in the same queue lane, with
    Stop on while it goes, its images in the gallery and the history."""
    lane = next(fn for fn in demo.fns.values() if fn.api_name == "generate").concurrency_id
    source = ui["follow_up_image"]
    for name in FOLLOW_UP_BUTTONS:
        inputs = [ui["gallery"], ui["result_picked"]]
        picked = ui[name].click(
            _checked_result(handlers, name),
            inputs,
            source,
            js=picked_js("gallery"),
            concurrency_limit=None,
            concurrency_id="form",  # queued (a refusal is a popup only then), never behind the runs
            api_visibility="private",
            show_progress="hidden",
        )
        picked.success(None, None, ui["stop"], js=RUN_QUEUED_JS, queue=False, api_visibility="private")
        event = picked.success(
            getattr(handlers, name),
            [source, ui["previews"]],
            [ui["gallery"], ui["seed"], ui["revised"], ui["info"], ui["made"]],
            api_name=name,
            concurrency_limit=concurrency,
            concurrency_id=lane,
            trigger_mode="multiple",
            show_progress="full",
            show_progress_on=ui["gallery"],
        )
        _after_run(event, handlers, ui)
