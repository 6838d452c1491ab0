"""The form's numbers as the UI or an API client sends them: numbers, or text of the digits 0-9. Booleans, other
scripts' digits, underscores and words for infinity are refused, naming the field and the form expected."""

from dataclasses import astuple, replace

import pytest

from ernie_nf4.errors import InvalidArgument
from ernie_nf4.request import FormValues, request_from_form

FORM = FormValues("a cat", "", 64, 64, 2, 4.0, 3, use_pe=True, num_images=1)
WHOLE_FIELDS = ("width", "height", "num_inference_steps", "seed", "num_images")
NUMERIC_FIELDS = (*WHOLE_FIELDS, "guidance_scale")
REFUSED = [
    True,
    False,
    "true",
    "٣٢٠",  # Arabic-Indic digits: int() and float() read 320
    "３２",  # full-width digits
    "1_0",  # int() and float() read 10
    "1_0.5",
    "inf",
    "-Infinity",
    "nan",
    "0x10",
    [64],
]


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
@pytest.mark.parametrize("value", REFUSED, ids=repr)
def test_booleans_foreign_digits_and_underscores_are_refused_naming_the_field(field, value):
    with pytest.raises(InvalidArgument) as refused:
        request_from_form(replace(FORM, **{field: value}))
    assert refused.value.field == field
    message = str(refused.value)
    assert message.startswith(f"{field} must be a ") and "written with the digits 0-9" in message
    assert "(like 4.5)" in message if field == "guidance_scale" else "(like 1024)" in message


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
@pytest.mark.parametrize("value", ["", "  ", None], ids=repr)
def test_a_field_left_empty_is_said_to_be_empty_not_shown_as_none(field, value):
    from ernie_nf4.webapp.messages import refusal

    with pytest.raises(InvalidArgument) as refused:
        request_from_form(replace(FORM, **{field: value}))
    example = "4.5" if field == "guidance_scale" else "1024"
    assert refused.value.field == field and str(refused.value) == f"{field} is empty; type a number like {example}"
    assert refusal(refused.value, "zh").endswith(f"为空；请输入一个数字，例如 {example}")


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_the_ui_validator_marks_the_field_and_says_the_form(field, tmp_path):
    pytest.importorskip("gradio")
    from ernie_nf4.webapp.handlers import FORM_FIELDS, Handlers

    from .support.app import FakeService

    handlers = Handlers(FakeService(), tmp_path)
    checks = dict(zip(FORM_FIELDS, handlers.validate(*astuple(replace(FORM, **{field: True}))), strict=True))
    assert [name for name, check in checks.items() if not check["is_valid"]] == [field]
    assert "written with the digits 0-9" in checks[field]["message"]


def test_numbers_and_ascii_digit_text_are_read_exactly():
    request, _ = request_from_form(
        replace(
            FORM,
            width=" 320 ",
            height="64.0",
            num_inference_steps=3.0,
            guidance_scale="4.5",
            seed="9007199254740987",
            num_images="+2",
        )
    )
    assert (request.width, request.height, request.num_inference_steps) == (320, 64, 3)
    assert (request.guidance_scale, request.seed, request.num_images) == (4.5, 9007199254740987, 2)
    with pytest.raises(InvalidArgument, match="got 9007199254740993$"):  # beyond a float's 53 bits: not rounded
        request_from_form(replace(FORM, seed="9007199254740993"))
    request, _ = request_from_form(replace(FORM, guidance_scale=7, seed=1e3, width="1e2"))
    assert (request.guidance_scale, request.seed, request.width) == (7.0, 1000, 96)  # 100 snapped to 96


def test_text_numbers_out_of_range_are_refused_by_the_range_check():
    with pytest.raises(InvalidArgument, match=r"width must be in \[64, 2048\]") as refused:
        request_from_form(replace(FORM, width="9" * 60))
    assert refused.value.field == "width"
    with pytest.raises(InvalidArgument, match="guidance_scale must be in"):
        request_from_form(replace(FORM, guidance_scale="1e300"))
    with pytest.raises(InvalidArgument, match="guidance_scale must be a finite number"):
        request_from_form(replace(FORM, guidance_scale="1e400"))  # inf


def test_an_enhanced_prompt_may_be_as_long_as_the_enhancer_writes():
    """The prompt enhancer may write 2048 tokens, more than the prompt's 8000 characters: its text, edited, is
    taken up to 32000 characters, and refused by name beyond."""
    from ernie_nf4.request import MAX_ENHANCED_CHARS, MAX_PROMPT_CHARS, GenerationRequest

    long = "a harbour at dawn, " * 600  # 11400 characters
    assert MAX_PROMPT_CHARS < len(long) < MAX_ENHANCED_CHARS
    assert GenerationRequest("a harbour", enhanced_prompt=long).enhanced_prompt == long
    with pytest.raises(InvalidArgument, match="enhanced_prompt must be at most 32000 characters") as refused:
        GenerationRequest("a harbour", enhanced_prompt="x" * (MAX_ENHANCED_CHARS + 1))
    assert refused.value.field == "enhanced_prompt"
    with pytest.raises(InvalidArgument, match="prompt must be at most 8000 characters"):
        GenerationRequest(long)
