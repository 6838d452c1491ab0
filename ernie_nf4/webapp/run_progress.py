"""A run's progress as the page shows it: one line in the user's language (the stage, "image k of N", the steps or
the prompt enhancer's tokens against its cap, the time left) and one overall fraction that never goes back, across
the stages and the images of a run."""

from __future__ import annotations

import threading
import time

from ..progress import Progress, format_seconds
from .i18n import progress_message, say

# Each stage's weight on the bar, in the order they run; a run's bar is shared by the stages it has. Decoding shares
# denoising's span: their events count the steps of the whole run (steps × images), and an image's decode comes
# right after its last step.
WEIGHTS = {"pe": 0.15, "text_encoding": 0.05, "denoising": 0.8}
RUN_STAGES = tuple(WEIGHTS)


def spans(stages=RUN_STAGES) -> dict[str, tuple[float, float]]:
    """Each of ``stages``' (start, end) on a bar from 0 to 1, in proportion to its weight: the prompt enhancer alone
    (Enhance first) spans the whole bar, a run without it starts with the text encoder."""
    present = [stage for stage in RUN_STAGES if stage in stages]
    total, start, found = sum(WEIGHTS[stage] for stage in present), 0.0, {}
    for stage in present:
        found[stage] = (start, start + WEIGHTS[stage] / total)
        start = found[stage][1]
    if "denoising" in found:
        found["vae_decode"] = found["denoising"]
    return found


def stages_of(runs_pe: bool, enhance_only: bool = False) -> tuple[str, ...]:
    """The stages on a run's bar: the prompt enhancer's when it writes, the rest unless it is all the run does."""
    return ("pe",) if enhance_only else RUN_STAGES if runs_pe else RUN_STAGES[1:]


def _images(event: Progress) -> tuple[int | None, int | None]:
    """The event's image number and count (1-based), when the library gives them."""
    image, images = getattr(event, "image", None), getattr(event, "images", None)
    return (image, images) if image and images else (None, None)


def describe(event: Progress, lang: str = "en") -> str:
    """One line for people in ``lang``: stage, which image, amount done, time left."""
    stage = f"stage_{event.stage}"
    try:
        parts = [say(stage, lang)]
    except KeyError:
        return event.describe()
    image, images = _images(event)
    if images and images > 1:
        parts.append(say("progress_image", lang, image=image, images=images))
    if event.done is not None and event.total:
        done, total = int(event.done), int(event.total)
        if event.unit == "steps" and event.stage == "denoising":
            step, steps = getattr(event, "image_step", None) or (done, total)  # within the current image
            parts.append(say("progress_step", lang, done=step, total=steps))
        elif event.unit == "steps":
            pass  # decoding: the image it decodes is said above
        elif event.unit == "tokens":
            parts.append(say("progress_tokens", lang, done=done, total=total))
        elif event.unit != "bytes":
            parts.append(f"{event.fraction:.0%}")
        else:
            parts.append(f"{event.done / 1e9:.2f} / {event.total / 1e9:.2f} GB")
    if event.eta_seconds is not None:
        parts.append(say("progress_eta", lang, time=_duration(event.eta_seconds, lang)))
    if event.message:
        parts.append(progress_message(event, lang))
    return " · ".join(parts)


ZH_UNITS = {"h": "小时", "min": "分", "s": "秒"}


def _duration(seconds: float, lang: str, tenths: bool = False) -> str:
    """``format_seconds``' text ("1 min 05 s"; ``tenths``: "3.2 s" under a minute), its units in Chinese for
    ``zh``."""
    text = f"{seconds:.1f} s" if tenths and seconds < 59.95 else format_seconds(seconds)
    return " ".join(ZH_UNITS.get(word, word) for word in text.split()) if lang == "zh" else text


class RunProgress:
    """Turns a run's ``Progress`` events into (fraction, text) for ``gr.Progress``; the fraction is the whole
    run's (of the ``stages`` it has: ``stages_of``) and never goes back (a new stage or image starts where the last
    one ended). What comes before the run (downloading, building or loading the package, compiling) shows its own
    amount when it has one, and leaves the run's bar at its start.

    Once ``previewed`` is set (a live preview went to the page), the text also says the time elapsed since the run
    started: Gradio's own timer restarts at each preview, and the page hides it while one shows."""

    def __init__(self, lang: str = "en", clock=time.monotonic, stages=RUN_STAGES):
        self.lang, self.clock, self.spans = lang, clock, spans(stages)
        self.started = clock()
        self.fraction = 0.0
        self.before: dict[str, float] = {}  # the last amount of each stage before the run
        self.previewed = False

    def describe(self, event: Progress, overall: bool = False) -> str:
        """The line for ``event``; ``overall``: it ends with the word for the whole run, since Gradio writes the
        bar's amount after the line ("… · step 3/8 · overall - 53.1%"), and for the run's stages that is the run's."""
        text = describe(event, self.lang)
        if self.previewed:
            elapsed = _duration(self.clock() - self.started, self.lang, tenths=True)
            text = f"{text} · {say('progress_elapsed', self.lang, time=elapsed)}"
        return f"{text} · {say('progress_overall', self.lang)}" if overall else text

    def overall(self, event: Progress) -> float:
        start, end = self.spans[event.stage]
        return start + (end - start) * (event.fraction or 0.0)

    def __call__(self, event: Progress) -> tuple[float, str]:
        if event.stage not in self.spans:  # its own amount, or its last one when this event says none
            if event.fraction is not None:
                self.before[event.stage] = event.fraction
            return self.before.get(event.stage, self.fraction), self.describe(event)
        self.fraction = max(self.fraction, min(1.0, self.overall(event)))
        return self.fraction, self.describe(event, overall=True)


class PageProgress:
    """A run's progress on the page: each event through ``RunProgress`` to ``progress`` (a ``gr.Progress``). A live
    preview's event marks the run as previewed; ``again()`` shows the last event again, its time brought up to date
    (the page drops the progress line when a preview arrives, until the next progress comes)."""

    def __init__(self, progress, lang: str = "en", stages=RUN_STAGES):
        self.progress, self.view, self.last = progress, RunProgress(lang, stages=stages), None
        self._lock = threading.Lock()  # the run's thread and the handler's (``again``) take turns: never an older line

    def __call__(self, event: Progress) -> None:
        if getattr(event, "preview", None) is not None:
            self.view.previewed = True
            return
        with self._lock:
            self.last = event
            fraction, text = self.view(event)
            self.progress(fraction, desc=text)

    def again(self) -> None:
        with self._lock:
            if (event := self.last) is not None:
                fraction, text = self.view(event)
                self.progress(fraction, desc=text)
