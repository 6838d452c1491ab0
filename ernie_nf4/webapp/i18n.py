"""The interface's words in English and Chinese.

- Labels (``t(key)``): Gradio picks the table from the browser's language (``navigator.language``: ``zh``,
  ``zh-CN``, … get Chinese), or the one picked in its Settings, and falls back to English.
- Texts the server writes (run info, popups, progress, errors, stats): ``say(key, lang, **values)`` from the
  ``MESSAGES`` tables, in the language of the page that caused them (``language(request)``: the page's own header,
  else the ``Accept-Language`` header)."""

from __future__ import annotations

import functools

from ..progress import DETAILS, Progress

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
    "tab_stats": "Stats",
    "refresh": "Refresh",
    # stats
    "stats_json": "Stats",
    # layout
    "custom": "Custom",
    "tab_create": "Create",
    "swap": "Swap width and height",
    "lora": "LoRA",
    "lora_scale": "LoRA scale",
    # image to image
    "img2img": "Image to image",
    "init_image": "Start from this image (upload or paste)",
    "strength": "Strength (1: ignore the image, 0: keep it)",
    "use_result": "Use this result",
    "enhance_first": "Enhance first",
    "enhanced": "Enhanced prompt (editable)",
    "enhanced_placeholder": "Empty: the PE writes it during the run. Enhance first puts its text here to read and "
    "edit; Generate then uses it as it is, without running the PE.",
    "clear_enhanced": "Clear enhanced prompt",
    "vary_subtle": "Vary (subtle)",
    "vary_strong": "Vary (strong)",
    "upscale": "Upscale x2",
    "follow_up_image": "Result image (a PNG this app made; its settings are read from it)",
    "live_previews": "Live previews (the image forming, every few steps)",
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
    "tab_stats": "统计",
    "refresh": "刷新",
    # stats
    "stats_json": "统计",
    # layout
    "custom": "自定义",
    "tab_create": "创作",
    "swap": "交换宽度和高度",
    "lora": "LoRA",
    "lora_scale": "LoRA 强度",
    # image to image
    "img2img": "图生图",
    "init_image": "从这张图片开始（上传或粘贴）",
    "strength": "重绘强度（1：忽略图片，0：保留原图）",
    "use_result": "用这张结果作起始图",
    "enhance_first": "先增强提示词",
    "enhanced": "增强后的提示词（可编辑）",
    "enhanced_placeholder": "留空：运行时由 PE 撰写。点击“先增强提示词”可在此查看并编辑它的文字；"
    "生成时原样使用，不再运行 PE。",
    "clear_enhanced": "清空增强后的提示词",
    "vary_subtle": "变化（轻微）",
    "vary_strong": "变化（强烈）",
    "upscale": "放大 2 倍",
    "follow_up_image": "结果图片（本应用生成的 PNG，从中读取设置）",
    "live_previews": "实时预览（每隔几步显示正在成形的图像）",
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
    return translations()(key)


# Texts the server writes, by language; ``{name}`` fields are filled by ``say``. Every key exists in each table.
MESSAGES = {
    "en": {
        "stopped": "Stopped. Nothing was kept from this run.",
        "enhance_stopped": "Enhance first stopped; nothing it wrote was kept.",
        "enhance_empty": "The prompt enhancer wrote nothing for this prompt, size and seed, so the enhanced prompt "
        "is left empty. Try another seed.",
        "caption": "{width}×{height} · seed {seed}",
        "png_unreadable": "{name} could not be read",
        "png_none": "{name} carries no generation parameters (no 'parameters' text chunk)",
        "png_not_png": "{name} is not a PNG file; drop a PNG this app saved",
        "png_damaged": "{name} is a damaged PNG (its {chunk} chunk is broken); drop a PNG this app saved",
        "png_bomb": "{name} claims {width}x{height} pixels, more than the {limit} this app opens; its settings were "
        "not read",
        "png_too_long": "{name}'s 'parameters' text is longer than {limit} bytes; it was not read",
        "png_no_prompt": "the PNG's parameters hold no prompt",
        "refuse_digits_whole": "{field} must be a whole number written with the digits 0-9 (like {like}), got {value}",
        "refuse_digits_number": "{field} must be a finite number in [{low}, {high}] written with the digits 0-9 "
        "(like {like}), got {value}",
        "header": "# ERNIE-Image NF4\nModel: **{model}**",
        "model_tiny": "TINY RANDOM MODEL (images are noise)",
        "no_gpu_reason": "No CUDA GPU found: ERNIE-Image NF4 needs an NVIDIA GPU (8 GB or more). To try the app "
        "without one, run `python app.py --tiny` (a tiny random model; images are noise).",
        "oom_run": "Out of GPU memory at {width}x{height} with {images} image(s). Try a smaller size, fewer images, "
        "memory mode low-vram (`--memory-mode low-vram`: about 6 GiB at 1024x1024), or a machine with more GPU "
        "memory; the next request can run.",
        "oom_load": "Out of GPU memory while loading the model. Use --memory-mode low-vram (about 6 GiB at "
        "1024x1024), close what else uses the GPU, or use a GPU with more memory.",
        "run_seed": "seed {seeds}",
        "run_pe": "PE {seconds} s",
        "run_text": "text {seconds} s",
        "run_denoise": "denoise {seconds} s ({ms} ms/step)",
        "run_vae": "VAE {seconds} s",
        "run_total": "total {seconds} s",
        "run_pe_wrote": "PE wrote {tokens} tokens",
        "run_pe_cut": "PE wrote {tokens} tokens (cut at the cap of {cap})",
        "run_pe_cached": "PE from cache",
        "run_pe_yours": "enhanced prompt: yours, as you gave it (the PE did not run)",
        "run_pe_reused": "enhanced prompt: the PE's, of the result this started from (the PE did not run again)",
        "run_peak": "peak VRAM {gib} GiB",
        "run_package": "package {provenance}",
        "run_lora": "LoRA {loras}",
        "lora_unknown": "lora: this app offers no LoRA named {name}; it offers {offered}",
        "lora_none_offered": "lora: this app offers no LoRA named {name}; it offers none",
        "lora_name_length": "lora must be the name of a LoRA the app offers (1 to {most} characters), got {name}",
        "lora_name_chars": "lora {name}: a LoRA name has no control characters, '<', '>' or ':' and no spaces at its "
        "ends",
        "lora_too_many": "lora: at most {most} LoRAs at once, got {count}",
        "lora_twice": "lora: each LoRA at most once, got {name} twice",
        "lora_not_names": "lora must be a LoRA's name or a list of names, got {value}",
        "init_image_unreadable": "init_image {name} could not be read as an image; give a PNG, JPEG or WebP file",
        "init_image_pixels": "init_image {name} has far more than {most} pixels; make it smaller",
        "init_image_size": "init_image must be {low} to {high} pixels wide and high and at most {most} pixels, got "
        "{size}; make it smaller",
        "init_image_too_small": "init_image must be {low} to {high} pixels wide and high, got {size}; give a larger "
        "image",
        "init_image_kind": "init_image must be an image file's path, a PIL image or an HxWx3 uint8 array, got {kind}",
        "init_image_rgb": "init_image must be an RGB PIL image, got {kind}",
        "strength_needs_image": "init_image is needed at strength {strength}: give one, or set strength to 1",
        "init_image_not_served": "init_image must be an image uploaded to this app or one of its results; a path on "
        "the server is not read",
        "lora_scale_count": "lora_scale: give one scale, or one per LoRA named ({names}), got {count}",
        "lora_scales_differ": "The page has one LoRA scale: the LoRAs of these settings had different scales "
        "({loras}); all now use {scale}.",
        "lora_tags_read": "The prompt's <lora:…> tags were read as LoRA choices: {loras}",
        "lora_not_offered": "This app does not offer the LoRA {names} of these settings; they run without it "
        "unless you pick another.",
        "no_gpu": "Generate is off: {reason}",
        "select_first": "Select an image in the history first.",
        "restored_history": "Settings restored from the history (seed {seed}).",
        "restored_png": "Settings restored from {name}.",
        "history_gone": "{count} image(s) of this browser's history are no longer on the server (deleted from its "
        "output folder); they were taken off the list.",
        "history_unsigned": "{count} entry(ies) of this browser's history were not made by this server, or were made "
        "under a history key it no longer has; they were taken off the list.",
        "history_unreadable": "The history this browser kept could not be read: the server's history key changed "
        "since (its key file was deleted or another one is used). Your next images start a new history.",
        "request_refused": "This request could not run: {reason}",
        "upload_budget": "You have uploaded as much as this server takes from one address in {minutes} minutes "
        "({files} files or {mb} MB). You can upload again in {wait}.",
        "wait_second": "1 second",
        "wait_seconds": "{count} seconds",
        "wait_minutes": "{count} minutes",
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
        "progress_elapsed": "{time} elapsed",
        "progress_overall": "overall",
        "note_snapped": "{field} {size} → {snapped} (a multiple of {multiple})",
        "note_control": "{field}: removed {count} control character(s)",
        "note_fitted": "{field} {size} → scaled to {scaled}, center-cropped to {target}",
        "restored_no_image": "These settings come from an image-to-image run (strength {strength}, init image "
        "{digest}); a PNG does not hold that image: put it in the image-to-image section again to run them alike.",
        "restored_seed_too_large": "The seed of these settings, {seed}, is past the largest this app runs ({most}): "
        "the page cannot hold it exactly, so that image cannot be made again here.",
        "no_result": "Generate an image first.",
        # refusals of a form field, by kind; {field} is the field's name, {value} what was sent
        "refuse_blank": "{field} must be a non-blank text",
        "refuse_empty_number": "{field} is empty; type a number like {like}",
        "refuse_text": "{field} must be text, got {value}",
        "refuse_long": "{field} must be at most {limit} characters, got {value}",
        "refuse_unicode": "{field} holds a character that is not valid Unicode text at position {value}; retype it",
        "refuse_multiple": "{field} must be a multiple of {multiple} in [{low}, {high}], got {value}",
        "refuse_range": "{field} must be in [{low}, {high}], got {value}",
        "refuse_whole": "{field} must be a whole number, got {value}",
        "refuse_bool": "{field} must be true or false, got {value}",
        # stats
        "stats_memory_cpu": "Memory: runs on the CPU, so every model stays in main memory (memory modes save GPU "
        "memory only).",
        "stats_memory_set": "Memory: {mode}, as set with --memory-mode.",
        "stats_memory_auto": "Memory: {mode}, chosen automatically: the GPU had {usable} GiB free and keeping every "
        "model on it needs about {needs} GiB.",
        "stats_memory_auto_plain": "Memory: {mode}, chosen automatically by the GPU memory free at load.",
        "stats_memory_later": "Memory: chosen when the model loads, by the GPU memory free then.",
        "stats_memory_later_set": "Memory: {mode}, as set with --memory-mode, from when the model loads.",
        "stats_mode_all-on-gpu": "every model stays on the GPU (all-on-gpu, the fastest)",
        "stats_mode_low-vram": "the models take turns on the GPU to save its memory (low-vram)",
        "stats_mode_model-offload": "diffusers moves each model onto the GPU when it is needed (model-offload)",
        "stats_compiled": "The transformer runs compiled (faster steps).",
        "stats_compile_ready": "The transformer is compiled; the next run uses it.",
        "stats_compiling": "The transformer is compiling in the background; runs get faster once it is done.",
        "stats_compile_failed": "Compiling the transformer failed, so it runs uncompiled (the server log says why).",
        "stats_compile_off": "The transformer runs uncompiled (--no-compile).",
        "stats_compute": "The transformer's linear layers multiply in {format} ({flag}); stored weights are unchanged.",
        "stats_compute_auto": "The transformer's linear layers multiply in FP8 from {tokens} tokens (text and image, "
        "both halves of a guided run), in bf16 below (--compute auto); stored weights are unchanged.",
        "stats_compile_pending": "The transformer is not compiled yet.",
        "stats_uncompiled": "The transformer runs uncompiled (--compile turns compiling on).",
        "stats_loaded": "Loaded in {seconds} s.",
        "stats_not_loaded": "Not loaded yet: the first Generate (or Load model, under Advanced) loads it.",
        "stats_no_run": "No run yet.",
        "stats_last_run": "Last run: {total} s in all ({stages}); {peak}.",
        "stats_stage_pe": "prompt enhancer {seconds} s for {tokens} tokens",
        "stats_stage_text_encoding": "text encoder {seconds} s",
        "stats_stage_denoising": "denoising {seconds} s",
        "stats_stage_vae_decode": "image decoding {seconds} s",
        "stats_peak": "peak GPU memory {gib} GiB",
        "stats_peak_cpu": "no GPU memory used (CPU)",
        "stats_peak_unknown": "peak GPU memory not measured",
        "stats_this_process": "This process",
        "stats_replica": "GPU {number} ({device})",
        "stats_cards": "**Cards it fits:** {fits}.",
        "stats_card": "{card} GB or more in {mode} mode (peak {peak} GiB at {width}×{height} on {gpu})",
        "stats_card_none": "more than {card} GB in {mode} mode (peak {peak} GiB at {width}×{height} on {gpu})",
        "stats_cards_unknown": "**Cards it fits:** not measured for this package (its metadata records no peak GPU "
        "memory; `python -m ernie_nf4.benchmark --package … --write-metadata` records it). Its files take {size}.",
        "stats_no_package": "No package yet: it is fetched on the first Generate (or with **Load model**).",
        "stats_package": "**Package** `{name}`: {provenance}.",
        "stats_verified": "verified by its ernie-nf4 metadata (sha256 of every file)",
        "stats_checked": "checked against its ernie-nf4 metadata (sha256 of configs and tokenizers, size and header of "
        "the weights; --verify-sha256 hashes the weights too)",
        "stats_not_verified": "not verified by ernie-nf4 metadata (written by another tool); its safetensors headers "
        "were checked",
        "stats_unloadable": "cannot be loaded: {why}",
        "stats_table": "| Part | Weights | Original | This package | Saved |",
        "stats_total": "**total**",
        "stats_unknown": "unknown",
        "stats_sizes_unknown": "The original's sizes are unknown for this package (no ernie-nf4 metadata): not "
        "guessed.",
        "stats_foreign": "**Metadata written by another tool** (shown as it is)",
        "stats_bench": "**Measured** at {width}×{height}, {steps} steps, on {gpu}:",
        "stats_bench_table": "| Mode | Load | Total | Per step | Peak GPU memory |",
        "stats_a_cpu": "a CPU",
        "stats_bench_bf16": "original (bf16)",
        "stats_bench_bf16-offload": "original (bf16), model offload",
        "stats_bench_nf4-stock": "NF4, diffusers' own code",
        "stats_bench_nf4": "NF4, every model on the GPU",
        "stats_bench_nf4-compile": "NF4, every model on the GPU, compiled",
        "stats_bench_nf4-low-vram": "NF4, low-vram",
        "stats_bench_nf4-low-vram-compile": "NF4, low-vram, compiled",
        "stats_part_transformer": "transformer",
        "stats_part_text_encoder": "text encoder",
        "stats_part_pe": "prompt enhancer",
        "stats_part_vae": "VAE (image decoder)",
        "stats_part_tokenizer": "tokenizer",
        "stats_part_pe_tokenizer": "prompt enhancer's tokenizer",
        "stats_part_scheduler": "scheduler",
        "stats_weights_original": "original",
        "stats_weights_nf4": "NF4 (4-bit)",
        "stats_weights_kept": "unchanged",
        "stats_chart_title": "Original vs NF4 per component",
        "stats_chart_x": "Component",
        "stats_chart_y": "Size on disk (GB)",
        "stats_chart_color": "Weights",
        "stats_load_ready": "The model is ready (loaded in {seconds} s).",
        "done_image_to_image": "from the start image at strength {strength}",
        "done_vary_subtle": "Vary (subtle) of seed {seed}: strength 0.3, new seed {new_seed}",
        "done_vary_strong": "Vary (strong) of seed {seed}: strength 0.6, new seed {new_seed}",
        "done_upscale": "Upscale x2 of seed {seed}: {width}x{height} at strength 0.3",
        "upscale_largest": "init_image is {size}: Upscale x2 makes images of at most {largest} pixels on the longer "
        "side, so this one would hardly grow; upscale a smaller result",
        "preview_caption": "Preview · step {step}/{steps}",
        "previews_not_bool": "previews must be true or false, got {value}",
    },
    "zh": {
        "stopped": "已停止。本次运行未保留任何结果。",
        "enhance_stopped": "“先增强提示词”已停止；它写出的文字未被保留。",
        "enhance_empty": "提示词增强器没有为这个提示词、尺寸和种子写出任何文字，增强后的提示词留空。请换一个种子再试。",
        "caption": "{width}×{height} · 种子 {seed}",
        "png_unreadable": "无法读取 {name}",
        "png_none": "{name} 不含生成参数（没有 parameters 文本块）",
        "png_not_png": "{name} 不是 PNG 文件；请拖入本应用保存的 PNG",
        "png_damaged": "{name} 是损坏的 PNG（其 {chunk} 块已损坏）；请拖入本应用保存的 PNG",
        "png_bomb": "{name} 声称有 {width}x{height} 像素，超过本应用可打开的 {limit}；未读取其设置",
        "png_too_long": "{name} 的 parameters 文本超过 {limit} 字节；未读取",
        "png_no_prompt": "该 PNG 的参数中没有提示词",
        "refuse_digits_whole": "{field}必须是用数字 0-9 写的整数（例如 {like}），收到的是 {value}",
        "refuse_digits_number": "{field}必须是 [{low}, {high}] 范围内、用数字 0-9 写的有限数（例如 {like}），"
        "收到的是 {value}",
        "header": "# ERNIE-Image NF4\n模型：**{model}**",
        "model_tiny": "微型随机模型（生成的图像是噪声）",
        "no_gpu_reason": "未找到 CUDA GPU：ERNIE-Image NF4 需要一块 NVIDIA GPU（8 GB 或以上）。"
        "没有 GPU 也想试用，请运行 `python app.py --tiny`（微型随机模型，生成的图像是噪声）。",
        "oom_run": "生成 {width}x{height}、{images} 张图片时 GPU 显存不足。请减小尺寸、减少图片数量、使用 low-vram "
        "显存模式（`--memory-mode low-vram`：1024x1024 约需 6 GiB），或换用显存更大的机器；下一个请求可以正常运行。",
        "oom_load": "加载模型时 GPU 显存不足。请使用 --memory-mode low-vram（1024x1024 约需 6 GiB）、"
        "关闭其他占用 GPU 的程序，或换用显存更大的 GPU。",
        "run_seed": "种子 {seeds}",
        "run_pe": "PE {seconds} 秒",
        "run_text": "文本编码 {seconds} 秒",
        "run_denoise": "去噪 {seconds} 秒（每步 {ms} 毫秒）",
        "run_vae": "VAE 解码 {seconds} 秒",
        "run_total": "共 {seconds} 秒",
        "run_pe_wrote": "PE 写了 {tokens} 个词元",
        "run_pe_cut": "PE 写了 {tokens} 个词元（达到上限 {cap}，被截断）",
        "run_pe_cached": "PE 结果来自缓存",
        "run_pe_yours": "增强后的提示词：使用你提供的文字（未运行 PE）",
        "run_pe_reused": "增强后的提示词：沿用起始结果中 PE 写的文字（未再次运行 PE）",
        "run_peak": "显存峰值 {gib} GiB",
        "run_package": "模型包 {provenance}",
        "run_lora": "LoRA：{loras}",
        "lora_unknown": "LoRA（lora）：本应用没有名为 {name} 的 LoRA；可用的有 {offered}",
        "lora_none_offered": "LoRA（lora）：本应用没有名为 {name} 的 LoRA；本应用不提供任何 LoRA",
        "lora_name_length": "LoRA（lora）必须是本应用提供的 LoRA 名称（1 到 {most} 个字符），收到 {name}",
        "lora_name_chars": "LoRA（lora）{name}：LoRA 名称不能含控制字符、“<”、“>”或“:”，首尾不能有空格",
        "lora_too_many": "LoRA（lora）：一次最多 {most} 个 LoRA，收到 {count} 个",
        "lora_twice": "LoRA（lora）：每个 LoRA 只能选一次，{name} 出现了两次",
        "lora_not_names": "LoRA（lora）必须是一个 LoRA 名称或名称列表，收到 {value}",
        "init_image_unreadable": "起始图片（init_image）{name} 无法作为图片读取；请提供 PNG、JPEG 或 WebP 文件",
        "init_image_pixels": "起始图片（init_image）{name} 的像素远超 {most}；请缩小后再试",
        "init_image_size": "起始图片（init_image）的宽和高须在 {low} 到 {high} 像素之间，且至多 {most} 像素，"
        "收到 {size}；请缩小后再试",
        "init_image_too_small": "起始图片（init_image）的宽和高须在 {low} 到 {high} 像素之间，收到 {size}；"
        "请换一张更大的图片",
        "init_image_kind": "起始图片（init_image）必须是图片文件的路径、PIL 图片或 HxWx3 的 uint8 数组，收到 {kind}",
        "init_image_rgb": "起始图片（init_image）必须是 RGB 模式的 PIL 图片，收到 {kind}",
        "strength_needs_image": "重绘强度（strength）{strength} 需要一张起始图片（init_image）；请提供一张，"
        "或将重绘强度设为 1",
        "init_image_not_served": "起始图片（init_image）必须是上传到本应用的图片或它生成的结果；不读取服务器上的路径",
        "lora_scale_count": "LoRA 强度（lora_scale）：请给一个强度，或为每个 LoRA 各给一个（{names} 个），"
        "收到 {count} 个",
        "lora_scales_differ": "页面只有一个 LoRA 强度：这些设置中的 LoRA 强度各不相同（{loras}），现在都使用 {scale}。",
        "lora_tags_read": "提示词中的 <lora:…> 标签已读作 LoRA 选择：{loras}",
        "lora_not_offered": "本应用不提供这些设置中的 LoRA {names}；除非另选一个，生成时不会使用它。",
        "no_gpu": "无法生成：{reason}",
        "select_first": "请先在历史记录中选择一张图片。",
        "restored_history": "已从历史记录恢复设置（种子 {seed}）。",
        "restored_png": "已从 {name} 恢复设置。",
        "history_gone": "本浏览器历史记录中有 {count} 张图片已不在服务器上（已从输出文件夹删除），已从列表中移除。",
        "history_unsigned": "本浏览器历史记录中有 {count} 条记录不是本服务器生成的，"
        "或是用它已不再持有的历史密钥生成的，已从列表中移除。",
        "history_unreadable": "无法读取本浏览器保存的历史记录：服务器的历史密钥已更改"
        "（其密钥文件被删除或换用了另一个）。接下来生成的图片将开始新的历史记录。",
        "request_refused": "该请求无法运行：{reason}",
        "upload_budget": "你已达到本服务器对每个地址每 {minutes} 分钟的上传上限（{files} 个文件或 {mb} MB）。"
        "{wait}后可以再次上传。",
        "wait_second": "1 秒",
        "wait_seconds": "{count} 秒",
        "wait_minutes": "{count} 分钟",
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
        "progress_elapsed": "已运行 {time}",
        "progress_overall": "总进度",
        "note_snapped": "{field} {size} → {snapped}（{multiple} 的倍数）",
        "note_control": "{field}：删除了 {count} 个控制字符",
        "note_fitted": "{field} {size} → 缩放到 {scaled}，居中裁剪为 {target}",
        "restored_no_image": "这些设置来自一次图生图（重绘强度 {strength}，起始图片 {digest}）；PNG 里没有那张图片："
        "请在图生图区域重新放入它，才能得到同样的结果。",
        "restored_seed_too_large": "这些设置的随机种子 {seed} 超出了本应用可用的最大值（{most}）：页面无法精确保存它，"
        "因此无法在这里重新生成那张图片。",
        "no_result": "请先生成一张图片。",
        "refuse_blank": "{field}不能为空",
        "refuse_empty_number": "{field}为空；请输入一个数字，例如 {like}",
        "refuse_text": "{field}必须是文本，收到的是 {value}",
        "refuse_long": "{field}最多 {limit} 个字符，现在是 {value} 个",
        "refuse_unicode": "{field}在第 {value} 个位置有无效的 Unicode 字符，请重新输入",
        "refuse_multiple": "{field}必须是 {multiple} 的倍数，范围 [{low}, {high}]，收到的是 {value}",
        "refuse_range": "{field}必须在 [{low}, {high}] 范围内，收到的是 {value}",
        "refuse_whole": "{field}必须是整数，收到的是 {value}",
        "refuse_bool": "{field}必须是 true 或 false，收到的是 {value}",
        # stats
        "stats_memory_cpu": "显存：在 CPU 上运行，所有模型都在内存中（显存模式只节省 GPU 显存）。",
        "stats_memory_set": "显存：{mode}，由 --memory-mode 指定。",
        "stats_memory_auto": "显存：{mode}，自动选择：加载时 GPU 有 {usable} GiB 空闲，"
        "所有模型常驻 GPU 约需 {needs} GiB。",
        "stats_memory_auto_plain": "显存：{mode}，按加载时 GPU 的空闲显存自动选择。",
        "stats_memory_later": "显存：模型加载时按当时 GPU 的空闲显存选择。",
        "stats_memory_later_set": "显存：{mode}，由 --memory-mode 指定，模型加载时生效。",
        "stats_mode_all-on-gpu": "所有模型常驻 GPU（all-on-gpu，最快）",
        "stats_mode_low-vram": "各模型轮流使用 GPU 以节省显存（low-vram）",
        "stats_mode_model-offload": "diffusers 在需要时把各模型移到 GPU（model-offload）",
        "stats_compiled": "Transformer 以编译后的形式运行（每步更快）。",
        "stats_compile_ready": "Transformer 已编译完成，下一次运行起使用。",
        "stats_compiling": "Transformer 正在后台编译；编译完成后运行会更快。",
        "stats_compile_failed": "Transformer 编译失败，以未编译形式运行（原因见服务器日志）。",
        "stats_compile_off": "Transformer 以未编译形式运行（--no-compile）。",
        "stats_compute": "Transformer 的线性层以 {format} 计算（{flag}），存储的权重不变。",
        "stats_compute_auto": "Transformer 的线性层在 {tokens} 个 token 起（文本与图像，含引导的两半）以 FP8 计算，"
        "更少时以 bf16 计算（--compute auto），存储的权重不变。",
        "stats_compile_pending": "Transformer 尚未编译。",
        "stats_uncompiled": "Transformer 以未编译形式运行（--compile 可开启编译）。",
        "stats_loaded": "加载用时 {seconds} 秒。",
        "stats_not_loaded": "尚未加载：第一次生成（或“高级设置”中的“加载模型”）时加载。",
        "stats_no_run": "还没有运行过。",
        "stats_last_run": "上一次运行：共 {total} 秒（{stages}）；{peak}。",
        "stats_stage_pe": "提示词增强 {seconds} 秒，写了 {tokens} 个词元",
        "stats_stage_text_encoding": "文本编码 {seconds} 秒",
        "stats_stage_denoising": "去噪 {seconds} 秒",
        "stats_stage_vae_decode": "图像解码 {seconds} 秒",
        "stats_peak": "显存峰值 {gib} GiB",
        "stats_peak_cpu": "未使用 GPU 显存（CPU）",
        "stats_peak_unknown": "显存峰值未测量",
        "stats_this_process": "本进程",
        "stats_replica": "GPU {number}（{device}）",
        "stats_cards": "**适用显卡**：{fits}。",
        "stats_card": "{mode} 模式需 {card} GB 及以上（{gpu} 上 {width}×{height} 峰值 {peak} GiB）",
        "stats_card_none": "{mode} 模式需 {card} GB 以上（{gpu} 上 {width}×{height} 峰值 {peak} GiB）",
        "stats_cards_unknown": "**适用显卡**：此模型包未测量（元数据中没有显存峰值记录；"
        "`python -m ernie_nf4.benchmark --package … --write-metadata` 可记录）。文件共 {size}。",
        "stats_no_package": "还没有模型包：第一次生成（或点击**加载模型**）时获取。",
        "stats_package": "**模型包** `{name}`：{provenance}。",
        "stats_verified": "已通过 ernie-nf4 元数据验证（每个文件的 sha256）",
        "stats_checked": "已按 ernie-nf4 元数据检查（配置和分词器的 sha256、权重文件的大小和文件头；"
        "--verify-sha256 会同时校验权重的 sha256）",
        "stats_not_verified": "未经 ernie-nf4 元数据验证（由其他工具生成）；已检查其 safetensors 文件头",
        "stats_unloadable": "无法加载：{why}",
        "stats_table": "| 组件 | 权重 | 原版 | 本模型包 | 节省 |",
        "stats_total": "**合计**",
        "stats_unknown": "未知",
        "stats_sizes_unknown": "此模型包原版的大小未知（没有 ernie-nf4 元数据）：不做猜测。",
        "stats_foreign": "**其他工具写入的元数据**（原样显示）",
        "stats_bench": "**实测**：{width}×{height}，{steps} 步，{gpu}：",
        "stats_bench_table": "| 模式 | 加载 | 总计 | 每步 | 显存峰值 |",
        "stats_a_cpu": "CPU",
        "stats_bench_bf16": "原版（bf16）",
        "stats_bench_bf16-offload": "原版（bf16），model offload",
        "stats_bench_nf4-stock": "NF4，diffusers 自带代码",
        "stats_bench_nf4": "NF4，所有模型常驻 GPU",
        "stats_bench_nf4-compile": "NF4，所有模型常驻 GPU，已编译",
        "stats_bench_nf4-low-vram": "NF4，low-vram",
        "stats_bench_nf4-low-vram-compile": "NF4，low-vram，已编译",
        "stats_part_transformer": "Transformer",
        "stats_part_text_encoder": "文本编码器",
        "stats_part_pe": "提示词增强模型",
        "stats_part_vae": "VAE（图像解码器）",
        "stats_part_tokenizer": "分词器",
        "stats_part_pe_tokenizer": "提示词增强分词器",
        "stats_part_scheduler": "调度器",
        "stats_weights_original": "原版",
        "stats_weights_nf4": "NF4（4 位）",
        "stats_weights_kept": "未改动",
        "stats_chart_title": "各组件原版与 NF4 大小对比",
        "stats_chart_x": "组件",
        "stats_chart_y": "磁盘大小 (GB)",
        "stats_chart_color": "权重",
        "stats_load_ready": "模型已就绪（加载用时 {seconds} 秒）。",
        "done_image_to_image": "从起始图片开始，重绘强度 {strength}",
        "done_vary_subtle": "变化（轻微），原种子 {seed}：重绘强度 0.3，新种子 {new_seed}",
        "done_vary_strong": "变化（强烈），原种子 {seed}：重绘强度 0.6，新种子 {new_seed}",
        "done_upscale": "放大 2 倍，种子 {seed}：{width}x{height}，重绘强度 0.3",
        "upscale_largest": "起始图片（init_image）是 {size}：放大 2 倍生成的图片长边最多 {largest} 像素，"
        "这张几乎不会变大；请放大一张更小的结果",
        "preview_caption": "预览 · 第 {step}/{steps} 步",
        "previews_not_bool": "previews（实时预览）必须是 true 或 false，收到 {value}",
    },
}
# The library's progress messages (``progress.DETAILS``) in Chinese: the same keys and fields.
DETAILS_ZH = {
    "tiny_original": "正在生成一个很小的随机 ERNIE-Image（几秒钟）",
    "tiny_component": "随机生成 {name}",
    "build_from": "正在用 quantize.py 从 {source} 构建模型包（一次一个模型）",
    "build_source": "正在读取原始模型 {source}",
    "build_quantize": "[{step}/{steps}] 正在把 {name} 量化为 NF4（{device}）",
    "build_left_out": "[{step}/{steps}] {name}：省去 {modules}（{parameters:,} 个参数）",
    "build_copy": "[{step}/{steps}] 正在复制 {name}",
    "build_preview_map": "正在根据 VAE 拟合实时预览的映射（{device}）",
    "build_done": "完成：{output}（{size}，比原模型小 {reduction:.1%}），用时 {seconds:.1f} 秒",
    "download_files": "{repo}：{files} 个文件，{size}",
    "download_complete": "完成",
    "download_failed": "{repo} 下载失败（{error}）",
    "download_lora": "LoRA {name}，来自 {source}",
    "load_found": "使用 {name} 中的模型包",
    "load_package": "模型包 {name}",
    "compile_now": "正在编译 transformer 的各个块（缓存供以后启动使用）",
    "compile_background": "transformer 的各个块在后台编译；在此之前以未编译形式运行",
    "compile_finish": "正在完成 transformer 各块的编译（约 {seconds:.0f} 秒，已有缓存）",
    "pe_graph": "正在捕获提示词增强器的解码图",
}
MESSAGES["en"].update({f"detail_{key}": text for key, text in DETAILS.items()})
MESSAGES["zh"].update({f"detail_{key}": text for key, text in DETAILS_ZH.items()})
# The form's fields as Chinese messages name them (the label, then the API's name).
FIELD_NAMES_ZH = {
    "prompt": "提示词",
    "negative_prompt": "反向提示词",
    "width": "宽度",
    "height": "高度",
    "num_inference_steps": "步数",
    "guidance_scale": "引导强度",
    "seed": "随机种子",
    "randomize_seed": "随机种子（每次不同）",
    "use_pe": "提示词增强",
    "num_images": "图片数量",
    "lora": "LoRA",
    "lora_scale": "LoRA 强度",
    "init_image": "起始图片",
    "strength": "重绘强度",
    "enhanced_prompt": "增强后的提示词",
    "previews": "实时预览",
}
# The fields whose English name is not their API name, as English messages name them (the label, then the API's
# name); the others (``prompt``, ``width``, ``seed``, …) are plain words already and keep their name alone.
FIELD_NAMES_EN = {
    "negative_prompt": "Negative prompt",
    "num_inference_steps": "Steps",
    "guidance_scale": "Guidance",
    "randomize_seed": "Randomize seed",
    "use_pe": "Prompt enhancer",
    "num_images": "Images",
    "lora_scale": "LoRA scale",
    "init_image": "Start image",
    "enhanced_prompt": "Enhanced prompt",
    "previews": "Live previews",
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
LANGUAGE_HEADER = "x-ernie-nf4-lang"  # the page's language, sent with each of its requests (``theme.LANGUAGE_JS``)


# Gradio's own texts its tables leave untranslated (the footer's Runs link, Settings' Screen Studio heading, a
# queued run's place, "complete" read out to screen readers, a key missing in every language), by Gradio's keys.
GRADIO_TEXTS = {
    "en": {"common.complete": "Complete"},
    "zh": {
        "common.runs": "运行记录",
        "common.runs_description": "查看保存在此浏览器中的运行记录",
        "common.screen_studio": "录屏工作室",
        "common.complete": "已完成",
        "status.queue_position": "排队中：第 {position} 位，共 {size} 位",
    },
}


@functools.cache
def translations():
    """The labels' tables as Gradio's ``gr.I18n`` (made on first use, so the server's texts load without Gradio),
    with ``GRADIO_TEXTS``."""
    import gradio as gr

    zh = {**ZH, **GRADIO_TEXTS["zh"]}
    return gr.I18n(en={**EN, **GRADIO_TEXTS["en"]}, zh=zh, **{"zh-CN": zh})


def language(request) -> str:
    """``"zh"`` when the request's page is in Chinese, else ``"en"``; ``request`` is a ``gr.Request`` or None. The
    page's language is its ``LANGUAGE_HEADER`` (the language Gradio shows, which Gradio's Settings can change), else
    (a client that is no page) the browser's: the ``Accept-Language`` header's first language (``zh``, ``zh-CN``, …
    are Chinese)."""
    headers = getattr(request, "headers", None) or {}
    try:
        picked, accepted = headers.get(LANGUAGE_HEADER, "") or "", headers.get("accept-language", "") or ""
    except AttributeError:
        return "en"
    return _language_of(picked or accepted)


def asgi_language(headers: list[tuple[bytes, bytes]]) -> str:
    """``language`` of an ASGI request's raw headers (``scope["headers"]``)."""
    named = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in headers}
    return _language_of(named.get(LANGUAGE_HEADER) or named.get("accept-language") or "")


def _language_of(value: str) -> str:
    """``"zh"`` for a language header whose first language is Chinese (``zh``, ``zh-CN``, …), else ``"en"``."""
    first = value.split(",", 1)[0].split(";", 1)[0].strip().lower()
    return "zh" if first.split("-", 1)[0] == "zh" else "en"


def say(key: str, lang: str = "en", **values) -> str:
    """The server's text ``key`` in ``lang`` (English when ``lang`` is not one of ``LANGUAGES``)."""
    table = MESSAGES.get(lang, MESSAGES["en"])
    if key not in table:
        raise KeyError(f"no server text named {key!r} in {lang!r}")
    return table[key].format(**values)


def progress_message(event: Progress, lang: str = "en") -> str:
    """``event``'s message in ``lang``: from its ``detail`` where the library gave one, else as it came."""
    if event.detail is None:
        return event.message
    return say(f"detail_{event.detail.key}", lang, **dict(event.detail.values))


def preview_prefixes() -> tuple[str, ...]:
    """How a live preview's caption starts (``preview_caption``), in each language."""
    return tuple(table["preview_caption"].split("{", 1)[0] for table in MESSAGES.values())


def is_preview_caption(caption) -> bool:
    """Whether ``caption`` is a live preview's, not a result's."""
    return isinstance(caption, str) and caption.startswith(preview_prefixes())


def field_name(field: str, lang: str = "en") -> str:
    """A form field as a message in ``lang`` names it: ``width``, ``Start image (init_image)`` or ``宽度（width）``."""
    if lang == "zh":
        return f"{name}（{field}）" if (name := FIELD_NAMES_ZH.get(field)) else field
    return f"{name} ({field})" if (name := FIELD_NAMES_EN.get(field)) else field
