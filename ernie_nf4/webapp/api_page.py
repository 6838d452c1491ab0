"""What ``/gradio_api/info`` and the "Use via API" page say about the app's endpoints: plain labels, whole numbers
typed int, and examples a person would send.

Gradio 6.31 builds that info in ``Blocks.get_api_info`` from each component's config: the ``label`` prop as it is
(ours are ``gr.I18n`` translations, which the info carries as ``{"key": ..., "_type": "translation_metadata"}`` and
the page prints as "[object Object]"), ``api_info_as_input()`` for the type (a ``Slider`` says ``number`` unless its
``precision`` is 0), and ``example_payload()`` for a required parameter's example (``Textbox``: "Hello!!"). The
page's code snippets (``gradio_client.snippet``) send a parameter's default when it has one, else that example.
``document_api`` wraps the demo's ``get_api_info`` (which the info route, the page and the MCP server all call) and
rewrites those fields (``lora`` and ``lora_scale`` also say that they take one value or a list, and the LoRAs the
app offers), and each endpoint's description (Gradio takes its handler's docstring, written for this code's
readers); the page itself keeps its translated labels.
"""

from __future__ import annotations

from functools import wraps

from .i18n import EN

# Examples for the parameters that have no default in the form: a prompt a person would write, the empty negative
# and enhanced prompts the form itself starts with, and no init image (plain text-to-image), so the API may leave
# them out.
EXAMPLE_INPUTS = {
    "prompt": "A red fox curled up asleep in fresh snow at dawn, soft light, photographed on film",
    # Vary's and Upscale's one input: a result PNG on the caller's disk (the page's snippet uploads it)
    "image": {"path": "ernie-result.png", "url": "ernie-result.png", "meta": {"_type": "gradio.FileData"}},
}
DEFAULTS = {"negative_prompt": "", "init_image": None, "enhanced_prompt": ""}
# The LoRA parameters take one value or a list (several LoRAs at once); the component's own type says only the list.
LORA_TYPES = {"lora": "str | list[str]", "lora_scale": "float | list[float]"}
SCALE_HELP = "0 to 2 (1: as trained): one scale for every LoRA named, or a list with one per name"
# Inputs whose API default is not the page's: the page's Live previews box starts ticked, an API client gets
# previews only when it asks.
API_DEFAULTS = {"previews": False}
# What each endpoint does, for API callers (the handlers' own docstrings are written for this code's readers).
ENDPOINTS = {
    "/generate": "Images from a prompt and the form's settings (with init_image and a strength below 1: from that "
    "image). Streams when previews is true: live previews of the image forming, then the images, the seed used, the "
    "revised prompt and the run info.",
    "/enhance": "The prompt enhancer's text for a prompt at a size and seed: what a /generate run with them would "
    "use. Give it, edited or not, as /generate's enhanced_prompt.",
    "/stats": "Package sizes, the cards it fits, recorded benchmarks and live figures (JSON).",
    "/vary_subtle": "A variation of a result PNG this app made: its prompt and settings read from the file, the image "
    "as the init image at strength 0.3, a new seed. Returns what /generate returns.",
    "/vary_strong": "As /vary_subtle, at strength 0.6: a stronger variation.",
    "/upscale": "A result PNG this app made at twice its size (at most 2048 on the longer side): its settings, the "
    "image as the init image at strength 0.3, the same seed; above the memory mode's budget in tiles (no previews). "
    "Returns what /generate returns.",
}
# What a parameter takes, where its label cannot say it.
HELP = {
    "previews": "true: the streamed outputs also carry live previews (the gallery as a small image of the run "
    "forming every few steps, captioned with its step) before the final images; false: only the final outputs",
    "enhanced_prompt": 'the enhanced prompt to use as it is, without running the PE ("" lets the PE write it); '
    "/enhance gives the PE's text for a prompt, size and seed to start from",
    "strength": "image-to-image strength, 0 to 1 (1 ignores init_image, 0 gives it back). Vary is a /generate call "
    "with a result as init_image at strength 0.3 (subtle) or 0.6 (strong), its size and settings and a new seed; "
    "Upscale x2 is one with a result as init_image, twice its width and height (at most 2048 on the longer side, "
    "multiples of 16), strength 0.3 and its seed (above 1024x1024 it runs in tiles). /vary_subtle, /vary_strong "
    "and /upscale do the same from the result's PNG alone",
    "image": "a result PNG this app made (as /generate, /vary_subtle, /vary_strong or /upscale return it): its "
    "prompt and settings are read from the file, and the enhanced prompt it was made with is used again",
}


def _lora_help(name: str, component) -> str:
    """What ``lora`` or ``lora_scale`` takes: a value or a list (the component's own type says only one of them)."""
    if name == "lora_scale":
        return SCALE_HELP
    names = [value for _, value in getattr(component, "choices", None) or []]
    return f'a LoRA\'s name ("" for none) or a list of names; this app offers: {", ".join(names) or "none"}'


def plain_label(label) -> str | None:
    """A label as English text: a translation (``gr.I18n`` data, or its config form) becomes ``EN``'s words."""
    key = label.get("key") if isinstance(label, dict) else getattr(label, "key", None)
    if key is None:
        return label
    return EN.get(key, key)


def _is_whole_slider(component) -> bool:
    import gradio as gr

    if not isinstance(component, gr.Slider):
        return False
    return all(float(value).is_integer() for value in (component.minimum, component.maximum, component.step))


def _parameter(parameter: dict, component) -> dict:
    """One parameter of the info with a plain label, an int type for a whole-number slider, a sensible example."""
    parameter = {**parameter, "label": plain_label(parameter["label"])}
    name = parameter["parameter_name"]
    if _is_whole_slider(component):
        parameter["type"] = {**parameter["type"], "type": "integer"}
        parameter["python_type"] = {**parameter["python_type"], "type": "int"}
        if isinstance(parameter["parameter_default"], float):
            parameter["parameter_default"] = int(parameter["parameter_default"])
    if name in LORA_TYPES:
        help_text = _lora_help(name, component)
        parameter["type"] = {**parameter["type"], "description": help_text}
        parameter["python_type"] = {"type": LORA_TYPES[name], "description": help_text}
    if name in HELP:
        parameter["type"] = {**parameter["type"], "description": HELP[name]}
    if name in EXAMPLE_INPUTS:
        parameter["example_input"] = EXAMPLE_INPUTS[name]
    if name in DEFAULTS and not parameter["parameter_has_default"]:
        parameter |= {"parameter_has_default": True, "parameter_default": DEFAULTS[name]}
    if name in API_DEFAULTS:
        parameter |= {"parameter_has_default": True, "parameter_default": API_DEFAULTS[name]}
    if parameter["parameter_has_default"]:  # the form's starting value, not the component's generic example
        parameter["example_input"] = parameter["parameter_default"]
    return parameter


def plain_api_info(demo, info: dict) -> dict:
    """``info`` (``Blocks.get_api_info``'s answer) with every label plain and the parameters of ``_parameter``."""
    inputs = {f"/{fn.api_name}": [block for block in fn.inputs if not block.skip_api] for fn in demo.fns.values()}
    for name, endpoint in info["named_endpoints"].items():
        components = inputs.get(name, [])
        if len(components) != len(endpoint["parameters"]):
            components = [None] * len(endpoint["parameters"])
        endpoint["parameters"] = [_parameter(p, c) for p, c in zip(endpoint["parameters"], components, strict=True)]
        endpoint["returns"] = [{**r, "label": plain_label(r["label"])} for r in endpoint["returns"]]
        endpoint["description"] = ENDPOINTS.get(name, endpoint.get("description", ""))
    return info


def document_api(demo) -> None:
    """Make ``demo``'s API info (``/gradio_api/info``, the "Use via API" page) read as described above."""
    original = demo.get_api_info

    @wraps(original)
    def get_api_info(all_endpoints: bool = False, page: str | None = None):
        return plain_api_info(demo, original(all_endpoints=all_endpoints, page=page))

    demo.get_api_info = get_api_info
