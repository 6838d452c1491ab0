"""The interface's words in English and Chinese.

- Labels (``t(key)``): Gradio picks the table from the browser's language (``navigator.language``: ``zh``,
  ``zh-CN``, … get Chinese) and falls back to English.
- Texts the server writes (run info, popups, progress, errors, stats): ``say(key, lang, **values)`` from the
  ``MESSAGES`` tables, in the language of the request that caused them (``language(request)``, read from its
  ``Accept-Language`` header)."""

from __future__ import annotations

import gradio as gr

EN = {
    "prompt": "Prompt",
    "prompt_placeholder": "Describe the image; quoted text is drawn into it. Ctrl+Enter (⌘+Enter) generates.",
    "generate": "Generate",
    "stop": "Stop",
    "load": "Load model",
    "advanced": "Advanced",
    "negative": "Negative prompt",
    "resolution": "Resolution",
    "width": "Width",
    "height": "Height",
    "steps": "Steps",
    "guidance": "Guidance",
    "seed": "Seed",
    "randomize": "Randomize seed",
    "pe": "Prompt enhancer (PE)",
    "images": "Images",
    "result": "Result",
    "revised": "Revised prompt (PE)",
    "run_info": "Run info",
    "examples": "Examples (click one to fill the form)",
    "history": "History (kept in this browser)",
    "use_settings": "Use these settings",
    "restore_png": "Restore settings from a PNG",
    "tab_generate": "Generate",
    "tab_stats": "Stats",
    "refresh": "Refresh",
    # layout
    "custom": "Custom",
    "tab_create": "Create",
    "swap": "Swap width and height",
}

ZH = {
    "prompt": "提示词",
    "prompt_placeholder": "描述画面；引号中的文字会写进图里。Ctrl+Enter（⌘+Enter）生成。",
    "generate": "生成",
    "stop": "停止",
    "load": "加载模型",
    "advanced": "高级设置",
    "negative": "反向提示词",
    "resolution": "分辨率",
    "width": "宽度",
    "height": "高度",
    "steps": "步数",
    "guidance": "引导强度",
    "seed": "随机种子",
    "randomize": "随机种子（每次不同）",
    "pe": "提示词增强（PE）",
    "images": "图片数量",
    "result": "生成结果",
    "revised": "增强后的提示词（PE）",
    "run_info": "运行信息",
    "examples": "示例（点击填入表单）",
    "history": "历史记录（保存在本浏览器）",
    "use_settings": "使用这些设置",
    "restore_png": "从 PNG 恢复设置",
    "tab_generate": "生成",
    "tab_stats": "统计",
    "refresh": "刷新",
    # layout
    "custom": "自定义",
    "tab_create": "创作",
    "swap": "交换宽度和高度",
}

I18N = gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH})


def t(key: str):
    """The translatable label for ``key`` (a key of ``EN``)."""
    if key not in EN:
        raise KeyError(f"no interface text named {key!r}")
    return I18N(key)


# Texts the server writes, by language; ``{name}`` fields are filled by ``say``. Every key exists in each table.
MESSAGES = {
    "en": {
        "stopped": "Stopped. Nothing was kept from this run.",
    },
    "zh": {
        "stopped": "已停止。本次运行未保留任何结果。",
    },
}
LANGUAGES = tuple(MESSAGES)


def language(request) -> str:
    """``"zh"`` when the request's browser prefers Chinese (its ``Accept-Language`` header's first language is
    ``zh``, ``zh-CN``, …), else ``"en"``; ``request`` is a ``gr.Request`` or None."""
    headers = getattr(request, "headers", None) or {}
    try:
        accepted = headers.get("accept-language", "") or ""
    except AttributeError:
        return "en"
    first = accepted.split(",", 1)[0].split(";", 1)[0].strip().lower()
    return "zh" if first.split("-", 1)[0] == "zh" else "en"


def say(key: str, lang: str = "en", **values) -> str:
    """The server's text ``key`` in ``lang`` (English when ``lang`` is not one of ``LANGUAGES``)."""
    table = MESSAGES.get(lang, MESSAGES["en"])
    if key not in table:
        raise KeyError(f"no server text named {key!r} in {lang!r}")
    return table[key].format(**values)
