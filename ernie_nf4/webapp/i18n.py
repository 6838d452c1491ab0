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
}


def example_label(label: str, lang: str) -> str:
    """An example's label (its title first, as ``examples.EXAMPLES`` has it) with the title in ``lang``."""
    if lang == "zh":
        for title, zh in EXAMPLE_TITLES_ZH.items():
            if label.startswith(title):
                return zh + label[len(title) :]
    return label


def t(key: str):
    """The translatable label for ``key`` (a key of ``EN``)."""
    if key not in EN:
        raise KeyError(f"no interface text named {key!r}")
    return I18N(key)


# Texts the server writes, by language; ``{name}`` fields are filled by ``say``. Every key exists in each table.
MESSAGES = {
    "en": {
        "stopped": "Stopped. Nothing was kept from this run.",
        "caption": "{width}×{height} · seed {seed}",
        "no_gpu": "Generate is off: {reason}",
        "select_first": "Select an image in the history first.",
        "restored_history": "Settings restored from the history (seed {seed}).",
        "restored_png": "Settings restored from {name}.",
        "png_refused": "{name}: {reason}",
        "history_gone": "{count} image(s) of this browser's history are no longer on the server (deleted from its "
        "output folder, or made before it restarted); they were taken off the list.",
        "request_refused": "This request could not run: {reason}",
        "internal_error": "Internal error ({kind}); the server log has the details. The next request can run.",
        "stage_download": "downloading",
        "stage_build": "building the package",
        "stage_load": "loading",
        "stage_compile": "compiling",
        "stage_pe": "prompt enhancer",
        "stage_text_encoding": "text encoding",
        "stage_denoising": "denoising",
        "stage_vae_decode": "decoding",
        "progress_image": "image {image} of {images}",
        "progress_step": "step {done}/{total}",
        "progress_tokens": "{done} / {total} tokens",
        "progress_eta": "ETA {time}",
        "note_snapped": "{field} {size} → {snapped} (a multiple of {multiple})",
        "note_control": "{field}: removed {count} control character(s)",
        # refusals of a form field, by kind; {field} is the field's name, {value} what was sent
        "refuse_blank": "{field} must be a non-blank text",
        "refuse_text": "{field} must be text, got {value}",
        "refuse_long": "{field} must be at most {limit} characters, got {value}",
        "refuse_unicode": "{field} holds a character that is not valid Unicode text at position {value}; retype it",
        "refuse_multiple": "{field} must be a multiple of {multiple} in [{low}, {high}], got {value}",
        "refuse_range": "{field} must be in [{low}, {high}], got {value}",
        "refuse_whole": "{field} must be a whole number, got {value}",
        "refuse_bool": "{field} must be true or false, got {value}",
    },
    "zh": {
        "stopped": "已停止。本次运行未保留任何结果。",
        "caption": "{width}×{height} · 种子 {seed}",
        "no_gpu": "无法生成：{reason}",
        "select_first": "请先在历史记录中选择一张图片。",
        "restored_history": "已从历史记录恢复设置（种子 {seed}）。",
        "restored_png": "已从 {name} 恢复设置。",
        "png_refused": "{name}：{reason}",
        "history_gone": "本浏览器历史记录中有 {count} 张图片已不在服务器上"
        "（已从输出文件夹删除，或生成于服务器重启之前），已从列表中移除。",
        "request_refused": "该请求无法运行：{reason}",
        "internal_error": "内部错误（{kind}）；详情见服务器日志。下一个请求可以正常运行。",
        "stage_download": "正在下载",
        "stage_build": "正在构建模型包",
        "stage_load": "正在加载",
        "stage_compile": "正在编译",
        "stage_pe": "提示词增强",
        "stage_text_encoding": "文本编码",
        "stage_denoising": "去噪",
        "stage_vae_decode": "解码",
        "progress_image": "第 {image} 张，共 {images} 张",
        "progress_step": "第 {done}/{total} 步",
        "progress_tokens": "已写 {done} / {total} 个词元",
        "progress_eta": "预计还需 {time}",
        "note_snapped": "{field} {size} → {snapped}（{multiple} 的倍数）",
        "note_control": "{field}：删除了 {count} 个控制字符",
        "refuse_blank": "{field}不能为空",
        "refuse_text": "{field}必须是文本，收到的是 {value}",
        "refuse_long": "{field}最多 {limit} 个字符，现在是 {value} 个",
        "refuse_unicode": "{field}在第 {value} 个位置有无效的 Unicode 字符，请重新输入",
        "refuse_multiple": "{field}必须是 {multiple} 的倍数，范围 [{low}, {high}]，收到的是 {value}",
        "refuse_range": "{field}必须在 [{low}, {high}] 范围内，收到的是 {value}",
        "refuse_whole": "{field}必须是整数，收到的是 {value}",
        "refuse_bool": "{field}必须是 true 或 false，收到的是 {value}",
    },
}
# The form's fields as Chinese messages name them (the label, then the API's name).
FIELD_NAMES_ZH = {
    "prompt": "提示词",
    "negative_prompt": "反向提示词",
    "width": "宽度",
    "height": "高度",
    "num_inference_steps": "步数",
    "guidance_scale": "引导强度",
    "seed": "随机种子",
    "use_pe": "提示词增强",
    "num_images": "图片数量",
}
# The examples' titles (``examples.EXAMPLES``) in Chinese; a title missing here shows in English.
EXAMPLE_TITLES_ZH = {
    "Poster, English title": "海报（英文标题）",
    "Chinese shop sign (中文招牌)": "中文招牌",
    "Infographic": "信息图",
    "Street photo": "街头摄影",
    "Chinese poster (春节海报)": "春节海报",
    "Recipe card layout": "菜谱卡片排版",
    "Neon sign photo": "霓虹灯招牌照片",
}
LANGUAGES = tuple(MESSAGES)
I18N = gr.I18n(en=EN, zh=ZH, **{"zh-CN": ZH})


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


def field_name(field: str, lang: str = "en") -> str:
    """A form field as a message in ``lang`` names it: ``width``, or ``宽度（width）``."""
    zh = FIELD_NAMES_ZH.get(field) if lang == "zh" else None
    return f"{zh}（{field}）" if zh else field
