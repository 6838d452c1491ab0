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
