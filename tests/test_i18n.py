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
