"""What the page's events call: ``Handlers`` holds the per-run stop signals, the output folder and the history's
key, and turns Gradio's positional values into a ``FormValues`` as it receives them. Texts go out in the language
of the request that caused them (``i18n.language``)."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import asdict, fields, replace
from functools import partial
from pathlib import Path

import gradio as gr

from ..errors import GenerationCancelled, InvalidArgument
from ..follow_ups import VARY_STRONG, VARY_SUBTLE, upscale_request, vary_request
from ..request import MAX_SEED, FormValues, LoraChoice, request_from_form
from ..system import free_device_memory
from .history import History
from .i18n import LANGUAGES, is_preview_caption, language, say
from .live import QUIET, Finished, streamed
from .messages import caption, note, run_summary, user_message
from .outputs import DEFAULT_OUTPUT_DIR, OutputStore
from .png_params import FormSettings, parameters_text, prompt_loras, read_png_parameters, read_result_parameters
from .run_progress import PageProgress, stages_of
from .runs import RunRegistry, drop_queued
from .stats_view import chart_columns, chart_rows, chart_titles, load_answer, stats_markdown
from .zerogpu import decorator as zerogpu_decorator
from .zerogpu import gpu_enhance, gpu_generate

logger = logging.getLogger(__name__)
# The model card's recommended sizes (about one megapixel each), square first, then each portrait with its landscape.
PRESETS = ["1024x1024", "896x1200", "1200x896", "848x1264", "1264x848", "768x1376", "1376x768"]
CUSTOM = "custom"
RANDOM_SEED_LIMIT = 2**32
HISTORY_LIMIT = 48
IMAGE_STRENGTH = 0.6  # the strength slider's value once an image is given (1 ignores the image)
# The generate event's inputs, by name and in the API's order; the fields a saved image's settings fill back in
# (its LoRAs as the LoRA dropdown and scale), then the randomize box (cleared, so the next run uses the restored seed).
FORM_FIELDS = tuple(field.name for field in fields(FormValues))
ENHANCE_FIELDS = ("prompt", "width", "height", "seed")  # Enhance first's inputs
RESTORED_FIELDS = (
    *(field.name for field in fields(FormSettings) if field.name not in ("loras", "init_image_sha256")),
    "lora",
    "lora_scale",
    "randomize_seed",
)


FOLLOW_UP_BUTTONS = ("vary_subtle", "vary_strong", "upscale")  # the handlers' and their endpoints' names
RESULT_BUTTONS = ("use_result", *FOLLOW_UP_BUTTONS)  # the buttons that take a result of the gallery
KEPT_GALLERIES = 256  # sessions whose last results are kept (for a stopped previewed run, a language change)
TICK_SECONDS = 0.5  # how often a previewed run's elapsed time is said again while no event comes


def _enhances(event) -> bool:
    """Whether a queued ``event`` is Enhance first's: Stop leaves its box as it is and says so in a popup."""
    return getattr(event.fn, "api_name", None) == "enhance"


def _session_key(request) -> str:
    """The session's key for its stop signals; a call without a session shares its key with nobody."""
    return (request.session_hash if request else None) or secrets.token_hex(16)


class Handlers:
    """What the UI's events call. One stop signal per run; Stop sets every running one of the session."""

    def __init__(
        self,
        service,
        output_dir: str | Path | OutputStore | None = None,
        gpu_decorator=None,
        history_key: bytes | None = None,
    ):
        self.service = service
        self.outputs = (
            output_dir if isinstance(output_dir, OutputStore) else OutputStore(output_dir or DEFAULT_OUTPUT_DIR)
        )
        self.output_dir = self.outputs.folder
        self.history = History(self.output_dir, history_key)
        self.runs = RunRegistry()
        self._galleries: dict[str, list] = {}  # session -> its last results' gallery, newest last
        self._said: dict[str, dict] = {}  # session -> its last results' captions and run info, in each language
        self._shown: dict[str, set] = {}  # session -> the progress of its runs under way (``PageProgress``)
        self._generate = gpu_generate(service, gpu_decorator if gpu_decorator is not None else zerogpu_decorator())
        self._enhance = gpu_enhance(service, gpu_decorator if gpu_decorator is not None else zerogpu_decorator())

    def load_model(self, request: gr.Request, progress=gr.Progress()):
        """Loads the model now; answers, in the page's language, where the models live and how long it took."""
        try:
            self.service.load(PageProgress(progress, language(request)))
        except Exception as err:
            raise gr.Error(user_message(err, language(request)), print_exception=False) from None
        return load_answer(self.service.stats().live, language(request))

    def _request(self, form: FormValues, lang: str):
        """The request and its notes (each said in a language by ``messages.note``) from the form; ``gr.Error`` in
        ``lang`` when refused."""
        if (problem := self.service.unavailable_reason()) is not None:
            raise gr.Error(say("no_gpu", lang, reason=problem), print_exception=False)
        form, tags = _prompt_tags(form)
        try:
            req, notes = request_from_form(self._served_image(form))
        except ValueError as err:
            raise gr.Error(user_message(err, lang), print_exception=False) from None
        if (unknown := self._unknown_lora(req, lang)) is not None:
            raise gr.Error(unknown, print_exception=False)
        read = [partial(say, "lora_tags_read", loras=tags)] if tags else []
        return req, read + list(notes)

    @property
    def lora_names(self) -> list[str]:
        """The names of the LoRAs the service offers (none for a service without LoRAs)."""
        return list(self.service.lora_names)

    def _unknown_lora(self, req, lang: str) -> str | None:
        """The message for the first LoRA of ``req`` the app does not offer (naming it and those it offers), or
        None."""
        offered = self.lora_names
        unknown = next((choice.name for choice in req.loras if choice.name not in offered), None)
        if unknown is None:
            return None
        if not offered:
            return say("lora_none_offered", lang, name=repr(unknown))
        return say("lora_unknown", lang, name=repr(unknown), offered=", ".join(map(repr, offered)))

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
        lora="",
        lora_scale=1.0,
        init_image=None,
        strength=1.0,
        enhanced_prompt="",
        request: gr.Request = None,
        progress=gr.Progress(),
        on_preview=None,
    ):
        """Generate images; returns the gallery, the seed used, the revised prompt and the run info (and, for the
        page only, the history's new entries). ``on_preview``: see ``_run``."""
        form = FormValues(
            prompt, negative_prompt, width, height, num_inference_steps, guidance_scale, seed, randomize_seed, use_pe,
            num_images, lora, lora_scale, init_image=init_image, strength=strength, enhanced_prompt=enhanced_prompt,
        )  # fmt: skip
        if form.randomize_seed is True:
            form = replace(form, seed=secrets.randbelow(RANDOM_SEED_LIMIT))
        lang = language(request)
        req, notes = self._request(form, lang)
        for text in notes:
            gr.Info(note(text, lang))
        key = _session_key(request)
        result = self._run(req, key, request, progress, lang, on_preview=on_preview)
        if result is None:  # stopped: the outputs keep what they showed and the info box says so
            return self.stopped_outputs(lang)
        if req.init_image is not None:  # the run info says it started from an image, as Vary's and Upscale's do
            notes = [partial(say, "done_image_to_image", strength=f"{req.strength:g}"), *notes]
        return self._saved(req, result, notes, lang, key)

    def _run(self, req, key: str, request, progress, lang: str, call=None, on_preview=None):
        """The request through the service (``call``: ``_enhance``, else ``_generate``) under a stop signal of its
        own; None when it was stopped. A run that gave its images is finished, whatever was pressed after its last
        step. ``on_preview((event, cancel, again))``: the run asks for live previews and each comes there, never
        once the run's stop signal is set (``again()`` shows the progress line again once the preview is shown)."""
        cancel = self.runs.start(key, request)
        call = call or self._generate
        show = PageProgress(progress, lang, stages_of(req.runs_pe, enhance_only=call == self._enhance))
        self._shown.setdefault(key, set()).add(show)  # said in the page's new language from its next line on
        try:
            if on_preview is not None:
                return call(req, on_progress=_previews_apart(show, on_preview, cancel), cancel=cancel, previews=True)
            return call(req, on_progress=show, cancel=cancel)
        except GenerationCancelled:
            return None  # Stop is not an error; what the run held goes back to the cache, as after an ended run
        except Exception as err:
            message = user_message(err, lang)  # logs what is unexpected, with its traceback whole
            free_device_memory(err)
            raise gr.Error(message, print_exception=False) from None
        finally:
            self.runs.end(key, cancel)
            shown = self._shown.get(key, set())
            shown.discard(show)
            if not shown:
                self._shown.pop(key, None)

    def generate_live(
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
        lora="",
        lora_scale=1.0,
        init_image=None,
        strength=1.0,
        enhanced_prompt="",
        previews=False,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """The ``/generate`` event: ``generate``'s outputs, and before them, when ``previews`` is true, each live
        preview of the image forming in the gallery (captioned with its step; the other outputs untouched). A run
        that does not ask gets ``generate``'s outputs alone. No preview comes once Stop is pressed."""
        form = (prompt, negative_prompt, width, height, num_inference_steps, guidance_scale, seed, randomize_seed)
        form += (use_pe, num_images, lora, lora_scale, init_image, strength, enhanced_prompt)
        lang = language(request)
        run = lambda emit: self.generate(*form, request=request, progress=progress, on_preview=emit)  # noqa: E731
        yield from self._live(run, previews, lang, _session_key(request))

    def _live(self, run, previews, lang: str, key: str):
        """A run's outputs, ``run(on_preview)``'s, and before them, when ``previews`` is true, each live preview of
        the image forming in the gallery (captioned with its step; the other outputs untouched); without them
        ``run(None)``'s alone. No preview comes once Stop is pressed, and a run that stops or fails after a preview
        puts back the session's last results (``key``): no preview stays behind as a result. Once a preview shows,
        the progress line's elapsed time goes on between the run's events (every ``TICK_SECONDS``)."""
        if not _asks_previews(previews, lang):
            yield self._remembered(key, run(None))
            return
        again, before = None, self._galleries.get(key, [])  # again: set once a preview shows
        for item in streamed(run, idle=TICK_SECONDS):
            if item is QUIET:
                if again is not None:
                    again()  # a long step: the time elapsed is said again, brought up to date
                continue
            shown = again is not None
            if isinstance(item, Finished):
                try:
                    outputs = item.result()
                except Exception:
                    if shown:
                        yield before, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                    raise
                stopped = shown and tuple(outputs) == tuple(self.stopped_outputs(lang))
                yield (before, *outputs[1:]) if stopped else self._remembered(key, outputs)
                return
            event, cancel, again_for_preview = item
            if not cancel.is_set():
                again = again_for_preview
                yield [(event.preview, _preview_caption(event, lang))], gr.skip(), gr.skip(), gr.skip(), gr.skip()
                again()  # the page dropped the progress line for the preview: it comes back at once

    def _remembered(self, key: str, outputs):
        """``outputs``, their gallery kept as the session's last results (for a stopped previewed run to put back;
        the most recent ``KEPT_GALLERIES`` sessions)."""
        if isinstance(outputs[0], list):
            _keep(self._galleries, key, outputs[0])
        return outputs

    def _saved(self, req, result, notes, lang: str, key: str | None = None):
        """Each image saved as a PNG with its parameters; the event's outputs. With the session's ``key``, its
        captions and run info are kept in every language, for the page to say again when its language changes
        (``relang``)."""
        paths, made = [], []
        for image, image_seed in zip(result.images, result.seeds, strict=True):
            text = parameters_text(req, image_seed, result.revised_prompt, self.service.label)
            paths.append(str(self.outputs.save(image, image_seed, text)))
            made.append(self.history.entry(paths[-1]))
        provenance = getattr(self.service, "provenance", None)
        said = {
            each: (
                [
                    (path, caption(req.width, req.height, s, req.prompt, each))
                    for path, s in zip(paths, result.seeds, strict=True)
                ],
                run_summary(result, notes, provenance, each),
            )
            for each in LANGUAGES
        }
        if key is not None:
            _keep(self._said, key, said)
        files, info = said[lang]
        return files, req.seed, result.revised_prompt or "", info, made

    def relang(self, gallery, info, request: gr.Request = None):
        """The result gallery's captions and the run info box in the page's language, once it changed: the
        session's last results as they were said in another language; what else they show stays. The progress of
        the session's runs under way is said in it from their next line on."""
        lang, said = language(request), self._said.get(_session_key(request))
        for show in list(self._shown.get(_session_key(request), ())):  # runs under way: their progress lines
            show.view.lang = lang
        try:
            names = [Path(str(_item_path(item))).name for item in _results(gallery)]
        except (TypeError, IndexError):  # not a gallery's value (a client's own)
            names = []
        files = gr.skip()
        if said and names and names == [Path(path).name for path, _ in said[lang][0]]:
            files = said[lang][0]
        texts = {say("stopped", each): say("stopped", lang) for each in LANGUAGES}
        if said:
            texts |= {said[each][1]: said[lang][1] for each in LANGUAGES}
        return files, texts.get(info, gr.skip()) if isinstance(info, str) else gr.skip()

    async def stop(self, request: gr.Request):
        """Stop the session's runs: running ones after their current step, queued ones before they start."""
        key, lang = _session_key(request), language(request)
        self.runs.stop_running(key)
        notice = say("enhance_stopped", lang)
        await drop_queued(
            request,
            key,
            lambda event: [gr.skip()] if _enhances(event) else list(self.stopped_outputs(lang)),
            notice=lambda event: notice if _enhances(event) else None,
        )

    @staticmethod
    def stopped_outputs(lang: str = "en"):
        """What a stopped run (running or queued) gives its outputs: gallery, seed and revised prompt keep what
        they show, the info box says Stopped, the history gets nothing new."""
        return gr.skip(), gr.skip(), gr.skip(), say("stopped", lang), gr.skip()

    def _refusal(self, form: FormValues, lang: str) -> tuple[str, str] | None:
        """(field, message) for a form the run would refuse, else None."""
        if form.randomize_seed is True:
            form = replace(form, seed=0)  # the handler draws a fresh seed; the typed one does not matter
        if (problem := self.service.unavailable_reason()) is not None:
            return FORM_FIELDS[0], say("no_gpu", lang, reason=problem)
        try:
            req, _ = request_from_form(self._served_image(_prompt_tags(form)[0]))
        except ValueError as err:  # InvalidArgument names its field; anything else is shown on the prompt
            field = err.field if isinstance(err, InvalidArgument) else None
            return (field if field in FORM_FIELDS else FORM_FIELDS[0]), user_message(err, lang)
        if (unknown := self._unknown_lora(req, lang)) is not None:
            return "lora", unknown
        return None

    def validate(
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
        lora="",
        lora_scale=1.0,
        init_image=None,
        strength=1.0,
        enhanced_prompt="",
        previews=False,
        request: gr.Request = None,
    ):
        """Checks the form (the generate event's inputs, in ``FORM_FIELDS`` order) before the run is queued: a
        refusal shows once, on the field it names (no error badges on the outputs), in the request's language,
        and API callers get the same message."""
        form = FormValues(
            prompt, negative_prompt, width, height, num_inference_steps, guidance_scale, seed, randomize_seed, use_pe,
            num_images, lora, lora_scale, init_image=init_image, strength=strength, enhanced_prompt=enhanced_prompt,
        )  # fmt: skip
        refused = self._refusal(form, language(request))
        if refused is None and not (previews is None or isinstance(previews, bool)):
            refused = "previews", say("previews_not_bool", language(request), value=repr(previews)[:40])
        return _field_checks(FORM_FIELDS, refused)

    def validate_enhance(self, prompt, width, height, seed, request: gr.Request = None):
        """Checks Enhance first's inputs (``ENHANCE_FIELDS``) before it is queued, as ``validate`` checks
        Generate's: a refusal shows on the field it names (the prompt for anything else), in the request's
        language."""
        form = FormValues(prompt, width=width, height=height, seed=seed, use_pe=True)
        return _field_checks(ENHANCE_FIELDS, self._refusal(form, language(request)))

    @staticmethod
    def snapped_size(_prompt, _negative_prompt, width, height, *_rest):
        """The width and height a run uses (a size inside the range snapped to a multiple of 16), for the fields:
        typed 1000, the field shows 1008. Takes the generate event's inputs (its validator checks them all)."""
        try:
            req, _ = request_from_form(FormValues("size", width=width, height=height, use_pe=False))
        except ValueError:
            return gr.skip(), gr.skip()
        return req.width, req.height

    @staticmethod
    def apply_preset(preset):
        """The (width, height) fields for a size picked in the dropdown ("1024x1024"); left as they are for custom
        or no size."""
        if not isinstance(preset, str) or preset == CUSTOM:
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

    def _history_view(self, items, lang: str):
        return [
            (
                str(self.output_dir / item["file"]),
                caption(*_size_seed(item["settings"]), item["settings"]["prompt"], lang),
            )
            for item in items
        ]

    def _history_note(self, dropped: dict, lang: str, unreadable: bool = False) -> str:
        """What the page says of the entries it could not show: a stored history it could not read (the key it was
        kept with is gone), images whose file is gone, entries not signed with this server's key."""
        notes = [say("history_unreadable", lang)] if unreadable else []
        notes += [say(f"history_{why}", lang, count=count) for why, count in dropped.items() if count]
        return " ".join(notes)

    def add_history(self, made, history, request: gr.Request = None):
        """Puts this run's images (the entries signed when they were made) first in the browser-kept history, in the
        result gallery's order (runs newest first, a run's images as it showed them); returns (state, gallery, note)."""
        lang = language(request)
        items, dropped = self.history.load(history)
        known = {item["file"] for item in items}
        new = [item for item in map(self.history.item, made or []) if item and item["file"] not in known]
        items = (new + items)[:HISTORY_LIMIT]
        return _stored(items), self._history_view(items, lang), self._history_note(dropped, lang)

    def show_history(self, history, stored=False, request: gr.Request = None):
        """The browser-kept history as the page opens: the entries that still have their image, and a note naming
        those it could not show. ``stored``: the browser holds a stored history; with no ``history`` read from it
        (None), it could not be decrypted: the key it was kept with is gone."""
        lang = language(request)
        items, dropped = self.history.load(history)
        unreadable = stored is True and history is None
        return _stored(items), self._history_view(items, lang), self._history_note(dropped, lang, unreadable)

    def _fill_form(self, settings: dict, lang: str) -> tuple[list, str]:
        """Form updates (``RESTORED_FIELDS`` order) from saved settings, and a note naming their LoRAs this app does
        not offer ("" when none). A missing value leaves its field alone; a restored seed clears the randomize box
        (so the next run uses it); the LoRA dropdown gets the settings' LoRAs the app offers (none when they name
        none) and the scale the first one's."""
        loras = [LoraChoice(**c) if isinstance(c, dict) else c for c in settings.get("loras") or ()]
        picked = [choice for choice in loras if choice.name in self.lora_names]
        missing = [repr(choice.name) for choice in loras if choice.name not in self.lora_names]
        settings = {
            **settings,
            "randomize_seed": None if settings.get("seed") is None else False,
            "lora": [choice.name for choice in picked],
            "lora_scale": picked[0].scale if picked else None,
            "enhanced_prompt": settings.get("enhanced_prompt") or "",  # settings without one empty the box
        }
        updates = [gr.skip() if settings.get(name) is None else settings[name] for name in RESTORED_FIELDS]
        notes = [say("lora_not_offered", lang, names=", ".join(missing))] if missing else []
        if len({choice.scale for choice in picked}) > 1:  # the page has one scale for all
            shown = ", ".join(f"{c.name} × {c.scale:g}" for c in picked)
            notes.append(say("lora_scales_differ", lang, loras=shown, scale=f"{picked[0].scale:g}"))
        seed = settings.get("seed")
        if isinstance(seed, int) and seed > MAX_SEED:  # a seed of an earlier version's, which allowed them up to 2**63
            notes.append(say("restored_seed_too_large", lang, seed=seed, most=MAX_SEED))
        if settings.get("strength") is not None and settings["strength"] < 1:
            digest = settings.get("init_image_sha256") or "?"
            notes.append(say("restored_no_image", lang, strength=f"{settings['strength']:g}", digest=digest))
        return updates, " ".join(notes)

    def use_history(self, history, index, request: gr.Request = None):
        """The picked history image's settings into the form; returns the restored fields, then the note."""
        lang = language(request)
        items, _ = self.history.load(history)
        if not isinstance(index, int) or not 0 <= index < len(items):
            return [*[gr.skip()] * len(RESTORED_FIELDS), say("select_first", lang)]
        settings = items[index]["settings"]
        updates, missing = self._fill_form(settings, lang)
        return [*updates, " ".join(filter(None, [say("restored_history", lang, seed=settings.get("seed")), missing]))]

    def restore_png(self, path, request: gr.Request = None):
        """A dropped PNG's settings into the form; returns the restored fields, the emptied drop box, the note. The
        uploaded copy is deleted once read."""
        if not path:
            return [*[gr.skip()] * len(RESTORED_FIELDS), gr.skip(), gr.skip()]
        lang, name = language(request), Path(path).name
        try:
            settings = read_png_parameters(path)
        except ValueError as err:
            return [*[gr.skip()] * len(RESTORED_FIELDS), None, user_message(err, lang)]
        finally:
            _delete_upload(Path(path))
        updates, missing = self._fill_form(asdict(settings), lang)
        return [*updates, None, " ".join(filter(None, [say("restored_png", lang, name=name), missing]))]

    def use_result(self, gallery, index, strength, request: gr.Request = None):
        """The result gallery's selected image (the first when none is selected) into the image-to-image input,
        with the strength at ``IMAGE_STRENGTH`` when it was 1 (which ignores the image), and the image-to-image
        section opened, where it shows; the note says when there is no result yet. Only a file the app served goes
        back: a client naming another path gets a refusal."""
        items = _results(gallery)
        if not items:
            return gr.skip(), gr.skip(), say("no_result", language(request)), gr.skip()
        item = items[index if isinstance(index, int) and 0 <= index < len(items) else 0]
        path = _item_path(item)
        if not self.served_file(path):
            return gr.skip(), gr.skip(), user_message(_not_served(), language(request)), gr.skip()
        return path, IMAGE_STRENGTH if _ignores_image(strength) else gr.skip(), "", gr.Accordion(open=True)

    def served_file(self, path) -> bool:
        """True for a file this app may read on a client's word: one of its own images, or one in Gradio's upload
        and cache folders (uploads, and the results Gradio serves). A path elsewhere on the server is not."""
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            return False
        resolved = Path(os.path.abspath(path)).resolve()
        folders = [Path(gr.utils.get_upload_folder()).resolve(), Path(gr.utils.get_cache_folder()).resolve()]
        return self.outputs.owns(str(resolved)) or any(resolved.is_relative_to(f) for f in folders)

    def _served_image(self, form: FormValues) -> FormValues:
        """``form``, refusing (``InvalidArgument`` naming ``init_image``) an init image given as a path the app did
        not serve: a client may name only its uploads and the app's results."""
        source = form.init_image
        path = source.get("path") if isinstance(source, dict) else source
        if isinstance(path, (str, os.PathLike)) and str(path) and not self.served_file(path):
            raise _not_served()
        return form

    @staticmethod
    def image_given(image, strength):
        """The strength slider once the image input changes: ``IMAGE_STRENGTH`` when an image came and the strength
        ignored images, 1 when the image was cleared."""
        if not image:
            return 1.0
        return IMAGE_STRENGTH if _ignores_image(strength) else gr.skip()

    def enhance(self, prompt, width, height, seed, request: gr.Request = None, progress=gr.Progress()):
        """Enhance first: the PE's text for the prompt at this size and seed, alone (``/enhance``), for the enhanced
        prompt's box: what a run would have the PE write, to read and edit before Generate uses it as it is. Stop
        ends it: the box keeps what it showed, and a popup says it stopped."""
        lang = language(request)
        req, notes = self._request(FormValues(prompt, width=width, height=height, seed=seed, use_pe=True), lang)
        for text in notes:
            gr.Info(note(text, lang))
        enhancement = self._run(req, _session_key(request), request, progress, lang, self._enhance)
        if enhancement is None:
            gr.Info(say("enhance_stopped", lang))
            return gr.skip()
        if not enhancement.text:  # emptied: what the box held was for another seed, prompt or size
            gr.Info(say("enhance_empty", lang))
        return enhancement.text

    def stats(self):
        """Package sizes, the cards it fits, recorded benchmarks and live figures (JSON)."""
        return self.service.stats().to_dict()

    def refresh_stats(self, request: gr.Request):
        """The Stats tab in the page's language: the text, and the chart with its titles."""
        import pandas as pd

        lang, data = language(request), self.service.stats()
        bar, _, kind = columns = chart_columns(lang)
        rows = pd.DataFrame(chart_rows(data, lang), columns=columns)
        # bars in package order; shown, when a new language hid it to draw it anew (``ui``)
        chart = gr.BarPlot(rows, color=kind, sort=list(rows[bar]), visible=True, **chart_titles(lang))
        return stats_markdown(data, lang), chart

    def selected_result(self, gallery, index):
        """The path of the result gallery's selected image (the first when none is selected; None when there is no
        result, or when a client names a file the app did not serve), for Vary and Upscale."""
        items = _results(gallery)
        if not items:
            return None
        item = items[index if isinstance(index, int) and 0 <= index < len(items) else 0]
        path = _item_path(item)
        return path if self.served_file(path) else None

    def result_for(self, kind: str, gallery, index, lang: str = "en"):
        """``selected_result``, checked as the ``kind`` follow-up (``FOLLOW_UPS``) would check it: ``gr.Error`` in
        ``lang`` before the run is queued, so a refusal is a popup and never an error over the results."""
        path = self.selected_result(gallery, index)
        self.follow_up_request(path, kind, lang)
        return path

    def vary_subtle(self, image, previews=False, request: gr.Request = None, progress=gr.Progress()):
        """Vary (subtle) ``image``, a result PNG of this app (``/vary_subtle``): its settings, read from the file,
        with the image as the init image at strength 0.3 and a new seed. Yields what ``generate_live`` yields
        (``previews``: live previews first)."""
        yield from self._follow_up(image, "vary_subtle", previews, request, progress)

    def vary_strong(self, image, previews=False, request: gr.Request = None, progress=gr.Progress()):
        """Vary (strong) ``image`` (``/vary_strong``): as ``vary_subtle``, at strength 0.6."""
        yield from self._follow_up(image, "vary_strong", previews, request, progress)

    def upscale(self, image, previews=False, request: gr.Request = None, progress=gr.Progress()):
        """Upscale x2 ``image``, a result PNG of this app (``/upscale``): its settings at twice its size (at most 2048
        on the longer side), the image as the init image at strength 0.3, the same seed; in tiles above the memory
        mode's budget (a tiled run shows no previews). Yields what ``generate_live`` yields."""
        yield from self._follow_up(image, "upscale", previews, request, progress)

    def follow_up_request(self, image, kind: str, lang: str = "en"):
        """The request of ``kind`` (``FOLLOW_UPS``) for the result PNG ``image`` and the note saying what it runs (a
        function of the language, as ``messages.note`` says it); ``gr.Error`` in ``lang`` when there is no image, its
        settings cannot be read or run, or it is refused."""
        path = image.get("path") if isinstance(image, dict) else image
        if not path:
            raise gr.Error(say("no_result", lang), print_exception=False)
        if (problem := self.service.unavailable_reason()) is not None:
            raise gr.Error(say("no_gpu", lang, reason=problem), print_exception=False)
        try:
            if not self.served_file(path):
                raise _not_served()
            settings, revised = read_result_parameters(path)
            source, _ = request_from_form(_settings_form(settings))
            req = FOLLOW_UPS[kind](source, path, revised)
        except ValueError as err:
            raise gr.Error(user_message(err, lang), print_exception=False) from None
        if (unknown := self._unknown_lora(req, lang)) is not None:
            raise gr.Error(unknown, print_exception=False)
        done = partial(say, f"done_{kind}", seed=source.seed, new_seed=req.seed, width=req.width, height=req.height)
        return req, done

    def _follow_up(self, image, kind: str, previews, request, progress):
        lang = language(request)
        req, done = self.follow_up_request(image, kind, lang)
        key = _session_key(request)

        def run(on_preview):
            result = self._run(req, key, request, progress, lang, on_preview=on_preview)
            return self.stopped_outputs(lang) if result is None else self._saved(req, result, [done], lang, key)

        yield from self._live(run, previews, lang, key)


def _field_checks(names: tuple[str, ...], refused: tuple[str, str] | None) -> list:
    """One ``gr.validate`` per input of ``names``: all pass when nothing is ``refused``, else the refused field (the
    first input when the field is not one of them) carries the message."""
    if refused is None:
        return [gr.validate(True, "") for _ in names]
    field, message = refused
    marked = field if field in names else names[0]
    return [gr.validate(name != marked, message if name == marked else "") for name in names]


def _keep(kept: dict, key: str, value) -> None:
    """``value`` kept for the session ``key``, as the newest; the most recent ``KEPT_GALLERIES`` sessions."""
    kept.pop(key, None)
    kept[key] = value
    while len(kept) > KEPT_GALLERIES:
        kept.pop(next(iter(kept)))


def _previews_apart(show: PageProgress, on_preview, cancel):
    """A run's progress callback that sends its live previews to ``on_preview((event, cancel, show.again))`` (none
    once ``cancel`` is set; ``show`` is told of each one sent) and every other event to ``show``."""

    def split(event) -> None:
        if getattr(event, "preview", None) is None:
            show(event)
        elif not cancel.is_set():
            show(event)
            on_preview((event, cancel, show.again))

    return split


def _asks_previews(value, lang: str) -> bool:
    """Whether ``previews`` asks for live previews: true or false (None: false); anything else is refused."""
    if not (value is None or isinstance(value, bool)):
        raise gr.Error(say("previews_not_bool", lang, value=repr(value)[:40]), print_exception=False)
    return value is True


def _preview_caption(event, lang: str) -> str:
    """A preview's caption: the step it shows, and which image of how many when there are several."""
    step, steps = event.image_step or (int(event.done), int(event.total))
    text = say("preview_caption", lang, step=step, steps=steps)
    if event.images and event.images > 1:
        text += " · " + say("progress_image", lang, image=event.image, images=event.images)
    return text


def _ignores_image(strength) -> bool:
    """Whether a start image would be ignored or unusable at ``strength``: 1 or more, or no strength in [0, 1] at all
    (the slider's box sends what was typed, such as 1.5, -1 or nothing, until it loses focus and clamps it)."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        return True
    return not 0 <= value < 1


def _size_seed(settings: dict) -> tuple:
    return settings.get("width"), settings.get("height"), settings.get("seed")


def _stored(items: list[dict]) -> list[dict]:
    """What the browser keeps of each entry: its file name and signature (the settings are read back each time)."""
    return [{"file": item["file"], "sig": item["sig"]} for item in items]


def _delete_upload(path: Path) -> None:
    """Delete an upload in Gradio's upload folder, and its folder when that is empty (Gradio gives each upload a
    folder of its own); a file elsewhere is left alone."""
    path = path.resolve()
    if not path.is_relative_to(Path(gr.utils.get_upload_folder()).resolve()):
        return
    try:
        path.unlink(missing_ok=True)
        path.parent.rmdir()
    except OSError:
        pass  # the folder holds other files


def _results(gallery) -> list:
    """The gallery's items when they are a run's images; none while it is empty or shows live previews."""
    items = list(gallery or [])
    return [] if any(is_preview_caption(_item_caption(item)) for item in items) else items


def _item_caption(item):
    """A gallery item's caption: ``(path, caption)`` as Gradio hands it over, ``{"caption": ...}`` raw."""
    if isinstance(item, (list, tuple)):
        return item[1] if len(item) > 1 else None
    return item.get("caption") if isinstance(item, dict) else None


def _item_path(item):
    """A gallery item's file path: ``(path, caption)`` as Gradio hands it over, or ``{"image": {"path": ...}}`` as a
    raw client may send it."""
    path = item[0] if isinstance(item, (list, tuple)) else item
    if isinstance(path, dict):
        path = path.get("image", path)
        path = path.get("path") if isinstance(path, dict) else path
    return path


def _not_served() -> InvalidArgument:
    return InvalidArgument(
        "init_image must be an image uploaded to this app or one of its results; a path on the server is not read",
        field="init_image",
        key="init_image_not_served",
    )


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _prompt_tags(form: FormValues) -> tuple[FormValues, str]:
    """A1111's ``<lora:NAME:SCALE>`` tags typed in the prompt, as the page's and the PNGs' LoRA choices: taken out
    of the prompt and added to ``lora`` (a LoRA the form names already keeps the form's scale). Returns the form and
    the tags read ("" when none), for a note."""
    if not isinstance(form.prompt, str) or "<lora:" not in form.prompt:
        return form, ""
    prompt, tagged = prompt_loras(form.prompt)
    if not tagged:
        return form, ""
    names = _as_list(form.lora)
    scales = _as_list(form.lora_scale)
    if len(scales) != len(names):  # one scale for every LoRA the form names
        scales = [form.lora_scale] * len(names)
    added = [choice for choice in tagged if choice.name not in names]
    read = ", ".join(f"{c.name} × {c.scale:g}" for c in tagged)
    lora = names + [c.name for c in added]
    return replace(form, prompt=prompt, lora=lora, lora_scale=scales + [c.scale for c in added]), read


# Vary and Upscale, by the name of their button and endpoint: the request each makes from a result's request, its
# image and the PE's revised prompt for it.
FOLLOW_UPS = {
    "vary_subtle": lambda req, image, revised: vary_request(req, image, VARY_SUBTLE, revised_prompt=revised),
    "vary_strong": lambda req, image, revised: vary_request(req, image, VARY_STRONG, revised_prompt=revised),
    "upscale": lambda req, image, revised: upscale_request(req, image, revised),
}


def _settings_form(settings: FormSettings) -> FormValues:
    """A result's saved settings as the form would send them (a value the file does not give: the form's default)."""
    named = ("negative_prompt", "width", "height", "num_inference_steps", "guidance_scale", "seed", "use_pe")
    given = {name: getattr(settings, name) for name in named if getattr(settings, name) is not None}
    return FormValues(
        settings.prompt,
        **given,
        lora=[choice.name for choice in settings.loras],
        lora_scale=[choice.scale for choice in settings.loras],
        enhanced_prompt=settings.enhanced_prompt or "",
    )
