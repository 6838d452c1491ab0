"""The values the page sends for the inputs of the app's private events (its own events: the size fields, the
history, the restore box, a result's buttons), checked before Gradio reads a request that calls one
(``limits.RequestLimits``). Gradio checks them only as it runs the event: there a value of the wrong kind (a text
for a number, a dict for a text, a list for a gallery, a file from elsewhere on the server) fails with HTTP 500, a
message of ``null`` and a traceback in the log. Here the request is refused (422) with a message naming the value.

Events with a validator (Generate's and Enhance first's checks) and public events (``/generate``, ``/enhance``, …)
are left to their validators and handlers, which name the field they refuse.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

# The largest number a page's number field holds (a JavaScript number, a double): anything up to it can be typed
# there, such as 1e308 for a width; a larger one can only come from a client of its own.
PAGE_NUMBER_LIMIT = sys.float_info.max
FILE_META = {"_type": "gradio.FileData"}


def unfit_values(fn, values: list, outputs=None) -> str | None:
    """Why ``values`` are not what the page sends for the inputs of ``fn`` (a Gradio event), naming the first value
    that is not by its place and its field; None when they fit, or when ``fn`` is not a private event without a
    validator. ``outputs``: the app's ``OutputStore``, whose images the page sends back (a result)."""
    if getattr(fn, "api_visibility", None) != "private" or fn.fn is None or getattr(fn, "validator", None):
        return None
    for place, (component, value) in enumerate(zip(fn.inputs, values, strict=False)):
        wanted = _unfit(component, value, outputs, fn.preprocess)
        if wanted is not None:
            field = type(component).__name__ + (f" #{component.elem_id}" if component.elem_id else "")
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            return f"value {place} of this event ({field}) must be {wanted}; got {shown}"
    return None


def _unfit(component, value, outputs, ranged: bool = True) -> str | None:
    """What ``component`` takes from the page, when ``value`` is not that; else None. ``ranged``: a number must be
    within the field's range (Gradio checks it for an event that preprocesses its values; an event that reads them
    raw gets what the page sends, such as a slider's number typed past its range, or none)."""
    if component.stateful:
        return None  # the server's own state: a value sent is not read
    wanted = _unfit_kind(component, value, ranged)
    if wanted is None and not all(_given_out(path, outputs) for path in _paths(value)):
        wanted = "a value whose files were uploaded to this server or are its results"  # Gradio reads them anywhere
    return wanted


def _unfit_kind(component, value, ranged: bool = True) -> str | None:
    """What ``component`` takes, when ``value`` is not of that kind; else None. A component not named here (the
    browser's storage: any JSON) takes any value."""
    import gradio as gr

    if isinstance(component, gr.Slider) and not ranged:
        return None if value is None else _number(value, None, None)
    if isinstance(component, gr.Slider):
        return _number(value, component.minimum, component.maximum)
    if isinstance(component, gr.Number):
        return None if value is None else _number(value, component.minimum, component.maximum)
    if isinstance(component, (gr.Textbox, gr.Markdown)):
        return None if value is None or isinstance(value, str) else "a text"
    if isinstance(component, gr.Checkbox):
        return None if value is None or isinstance(value, bool) else "true or false"
    if isinstance(component, gr.Dropdown):
        return None if value is None else _choice(component, value)
    if getattr(component, "data_model", None) is not None and value is not None:
        return _files(component, value)
    return None


def _number(value, low, high) -> str | None:
    """What a number field takes, when ``value`` is not a finite number of at most ``PAGE_NUMBER_LIMIT`` in size,
    within [``low``, ``high``] (either may be None)."""
    wanted = f"a number in [{low:g}, {high:g}]" if low is not None and high is not None else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return wanted
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > PAGE_NUMBER_LIMIT:
        return wanted
    if (low is not None and value < low) or (high is not None and value > high):
        return wanted
    return None


def _choice(component, value) -> str | None:
    """What a dropdown takes (one of its choices; a list of them when it takes several), when ``value`` is not
    that."""
    choices = [choice for _, choice in component.choices]
    if component.multiselect:
        picked, wanted = value, f"a list of its choices {choices}"
    else:
        picked, wanted = [value], f"one of its choices {choices}"
    if not isinstance(picked, list) or any(isinstance(each, (list, dict)) for each in picked):
        return wanted
    if not component.allow_custom_value and any(each not in choices for each in picked):
        return wanted
    return None


def _files(component, value) -> str | None:
    """What a component of files takes (its Gradio data model: file objects, captions), when ``value`` is not
    that."""
    kind = type(component).__name__.lower()
    try:
        component.data_model.model_validate(value, context={"validate_meta": True})
    except ValueError:  # pydantic's ValidationError
        return f"{kind} data as the page sends it (Gradio's file objects, with meta {FILE_META})"
    return None


def _paths(value) -> list:
    """The paths of the file objects in ``value`` (dicts marked with ``FILE_META``, at any depth)."""
    if isinstance(value, list):
        return [path for item in value for path in _paths(item)]
    if not isinstance(value, dict):
        return []
    if value.get("meta") == FILE_META:
        return [value.get("path")]
    return [path for item in value.values() for path in _paths(item)]


def _given_out(path, outputs) -> bool:
    """True for a file Gradio takes in a page's value: one in its upload folder, or in the output folder (which the
    app has Gradio serve)."""
    from gradio.utils import get_upload_folder

    if not isinstance(path, str) or not path:
        return False
    resolved = Path(os.path.abspath(path)).resolve()
    if resolved.is_relative_to(Path(get_upload_folder()).resolve()):
        return True
    return outputs is not None and outputs.holds(path)
