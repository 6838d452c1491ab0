"""The interface's words: every text exists in English and Chinese, with the same fields to fill in."""

import string

from ernie_nf4.webapp.i18n import EN, MESSAGES, ZH


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_server_text_and_label_exists_in_both_languages_with_the_same_fields():
    assert set(MESSAGES["en"]) == set(MESSAGES["zh"])
    assert set(EN) == set(ZH)
    differ = [key for key in MESSAGES["en"] if _fields(MESSAGES["en"][key]) != _fields(MESSAGES["zh"][key])]
    assert differ == []
    untranslated = [key for key in MESSAGES["en"] if MESSAGES["en"][key] == MESSAGES["zh"][key]]
    assert untranslated == []


def test_every_text_s_markdown_renders_without_stray_markers():
    """Bold next to CJK punctuation must close where the text means it to (CommonMark's flanking rules): no
    literal ``**`` in what the page shows."""
    from markdown_it import MarkdownIt

    render = MarkdownIt().render
    for lang, table in MESSAGES.items():
        stray = [key for key, text in table.items() if "**" in render(text.replace("{", "").replace("}", ""))]
        assert stray == [], lang


def test_the_stats_tab_names_the_tiny_model_in_the_page_s_language(tmp_path):
    from ernie_nf4.serving.service import ImageService, ServiceConfig
    from ernie_nf4.webapp.i18n import say
    from ernie_nf4.webapp.stats_view import stats_markdown

    service = ImageService(ServiceConfig(model_dir=str(tmp_path / "none"), repo_id=None, source=None, tiny=True))
    text = stats_markdown(service.stats(), "zh")  # the service names the model in English, as PNGs record it
    assert text.startswith(f"**{say('model_tiny', 'zh')}**") and say("model_tiny") not in text


def test_the_pages_own_language_wins_over_the_browsers():
    from types import SimpleNamespace

    from ernie_nf4.webapp.i18n import LANGUAGE_HEADER, language

    def request(**headers):
        return SimpleNamespace(headers=headers)

    assert language(request(**{"accept-language": "zh-CN,zh;q=0.9"})) == "zh"
    assert language(request(**{"accept-language": "zh-CN", LANGUAGE_HEADER: "en"})) == "en"
    assert language(request(**{"accept-language": "en-US", LANGUAGE_HEADER: "zh-CN", "cookie": "a=é; b={}"})) == "zh"
    assert language(request(**{"accept-language": "zh", LANGUAGE_HEADER: ""})) == "zh"
    assert language(None) == "en"


def test_an_english_message_names_a_field_by_the_page_s_words_and_its_api_name():
    """The English page says a refused field as the Chinese one does (``Start image (init_image) …``); a field whose
    name is a plain word (``width``) keeps it; the library's own text keeps the API's name alone."""
    from ernie_nf4.errors import InvalidArgument
    from ernie_nf4.request import _init_size_error
    from ernie_nf4.webapp.i18n import FIELD_NAMES_EN, FIELD_NAMES_ZH
    from ernie_nf4.webapp.messages import note, refusal

    assert set(FIELD_NAMES_EN) < set(FIELD_NAMES_ZH)
    small = _init_size_error((10, 10))
    assert str(small).startswith("init_image must be ")
    assert refusal(small, "en") == str(small).replace("init_image", "Start image (init_image)", 1)
    assert refusal(small, "zh").startswith("起始图片（init_image）")
    sha = InvalidArgument("init_image's sha256 must be 64 hex digits, got 'x'", field="init_image")
    assert refusal(sha, "en") == "Start image (init_image)'s sha256 must be 64 hex digits, got 'x'"
    unread = InvalidArgument("init_image 'photo.png' could not be read as an image", field="init_image")
    assert refusal(unread, "en") == "Start image (init_image) 'photo.png' could not be read as an image"
    count = InvalidArgument("lora_scale: give one scale, or one per LoRA named (2), got 3", field="lora_scale")
    assert refusal(count, "en").startswith("LoRA scale (lora_scale): give one scale")
    width = InvalidArgument("width must be in [64, 2048], got 0", field="width")
    assert refusal(width, "en") == str(width)
    assert note("enhanced_prompt: removed 1 control character(s)") == (
        "Enhanced prompt (enhanced_prompt): removed 1 control character(s)"
    )
    assert note("width 1000 → 1008 (a multiple of 16)") == "width 1000 → 1008 (a multiple of 16)"
