"""Formatting for people, in one place: sizes, durations, run info, any JSON value as short text, and the
benchmark's tables. Pure functions of the library's dataclasses (no UI toolkit imported); the app's Stats tab, in
the reader's language, is ``webapp.stats_view``."""

from __future__ import annotations

import json

from .progress import format_seconds

__all__ = ["format_bytes", "format_seconds"]
FLOOR_TEXT_TOKENS = 256  # about what a PE rewrite encodes to


def format_bytes(count: float | None) -> str:
    """``9,048,442,156`` -> ``9.05 GB``; small sizes keep their unit (``512 B``, ``3.4 MB``)."""
    if count is None:
        return "unknown"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{int(count)} B"


def readable_value(value, depth: int = 0) -> str:
    """Any JSON value as short text for people (numbers with separators, nested objects flattened)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "…"
    if isinstance(value, dict):
        if depth >= 2:
            return "{…}"
        return "; ".join(f"{k}: {readable_value(v, depth + 1)}" for k, v in list(value.items())[:20])
    if isinstance(value, list):
        return ", ".join(readable_value(v, depth + 1) for v in value[:20]) + (" …" if len(value) > 20 else "")
    return str(value)


def ratios(modes: list[dict]) -> list[str]:
    """The headline ratios from one run's modes (those present): NF4 against stock and bf16."""
    ok = {r["mode"]: r for r in modes if r["status"] == "ok"}
    lines = []

    def compare(what: str, mode: str, base: str, value) -> None:
        if mode in ok and base in ok and value(ok[base]):
            lines.append(f"- {what}: {mode} / {base} = {value(ok[mode]) / value(ok[base]):.2f}x")

    for mode in ("nf4", "nf4-compile", "nf4-low-vram"):
        compare("denoising step", mode, "nf4-stock", lambda r: r["ms_per_step"])
    for mode in ("nf4-stock", "nf4", "nf4-compile", "nf4-low-vram"):
        compare("end to end", mode, "bf16", lambda r: r["seconds"]["total"])
    compare("end to end", "nf4-low-vram", "nf4", lambda r: r["seconds"]["total"])
    compare("cold load", "nf4", "bf16", lambda r: r["load_seconds"])
    for mode in [m for m in ok if m.endswith(("+fp8", "+int8"))]:
        base, compute = mode.rsplit("+", 1)
        compare(f"denoising step in {compute}", mode, base, lambda r: r["ms_per_step"])
    for mode in [m for m in ok if m.endswith("+lora")]:
        compare("denoising step with the LoRA", mode, mode.removesuffix("+lora"), lambda r: r["ms_per_step"])
        compare("peak reserved with the LoRA", mode, mode.removesuffix("+lora"), lambda r: r["peak_reserved_gib"])
    for mode, r in ok.items():
        if r["seconds"].get("total"):
            share = f"- PE share of end to end, {mode}: {r['seconds']['pe'] / r['seconds']['total']:.0%}"
            if r.get("moving_seconds") is not None:
                share += f" (moving models onto the GPU: {r['moving_seconds']:.2f} s per run)"
            lines.append(share)
    return lines


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _report_heading(report: dict) -> list[str]:
    """The table's heading: settings, card and versions, and a note on synthetic models."""
    s = report["settings"]
    lines = [
        f"### {s['width']}x{s['height']}, {s.get('num_inference_steps', s.get('steps'))} steps, "
        f"guidance {s.get('guidance_scale', s.get('guidance'))}, seed {s['seed']}, "
        f"PE {'on' if s['use_pe'] else 'off'} (max {s['max_pe_tokens']} PE tokens), median of {s['repeat']}",
        "",
        f"GPU: {report['gpu'] or 'none (CPU)'}; versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v),
        "",
    ]
    if report["synthetic"]:
        lines += [
            f"Synthetic {report['synthetic']}-size model with random weights: timings and memory are real, "
            "images are noise.",
            "",
        ]
    return lines


def _mode_rows(modes: list[dict]) -> list[str]:
    """One table row per benchmark mode (its status alone when it did not run)."""
    lines = [
        "| mode | load s | warm-up s | PE s | PE ms/token | text enc. s | denoise s | ms/step | VAE s | total s "
        "| peak alloc GiB | peak reserved GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in modes:
        if r["status"] != "ok":
            lines.append(f"| {r['mode']} | {r['status']} |||||||||||")
            continue
        sec = r["seconds"]
        cold = "" if r["cold_cache"] else " (warm cache)"
        lines.append(
            f"| {r['mode']} | {_num(r['load_seconds'], '.1f')}{cold} | {_num(r['warmup_seconds'], '.1f')} | "
            f"{sec['pe']:.2f} | {_num(r.get('pe_ms_per_token'), '.1f')} | {sec['text_encoding']:.2f} | "
            f"{sec['denoising']:.2f} | {r['ms_per_step']:.1f} | {sec['vae_decode']:.2f} | {sec['total']:.2f} | "
            f"{_num(r['peak_allocated_gib'], '.2f')} | {_num(r['peak_reserved_gib'], '.2f')} |"
        )
    return lines


def _floor_lines(report: dict) -> list[str]:
    """Each mode's denoising step against the card's bf16 arithmetic floor (when the report has the card's rate)."""
    if not (report.get("bf16_tflops") and report.get("transformer_config")):
        return []
    s = report["settings"]
    batch = transformer_batch(s.get("guidance_scale", s.get("guidance", 4.0)), s.get("num_images", 1))
    return [
        step_floor_line(
            report["transformer_config"],
            s["width"],
            s["height"],
            FLOOR_TEXT_TOKENS,
            r["ms_per_step"],
            report["bf16_tflops"],
            batch,
        )
        + f" ({r['mode']}; {FLOOR_TEXT_TOKENS} text tokens assumed, a batch of {batch})"
        for r in report["modes"]
        if r["status"] == "ok" and r["ms_per_step"]
    ]


def _fidelity_lines(f: dict, synthetic) -> list[str]:
    """The fidelity figures: NF4 vs bf16, the fast path vs the stock forward, and their yardsticks."""

    def errors_of(values: dict) -> str:
        return ", ".join(f"t={t}: {e:.4f}" for t, e in values.items())

    def errors(key: str) -> str:
        return errors_of(f.get(key, {}))

    lines = [
        "",
        f"Fidelity (NF4 vs bf16, PE off, same latents): transformer relative output error "
        f"{errors('transformer_relative_error')}; final-latent cosine {f['final_latent_cosine']:.4f}; "
        f"PSNR {f['psnr_db']:.2f} dB; SSIM {f['ssim']:.4f}.",
        f"Fast path vs stock forward (same NF4 model, same inputs): {errors('fast_path_vs_stock_relative_error')}; "
        f"compiled: {errors('compiled_vs_stock_relative_error')}. Yardsticks: the stock forward with another "
        f"attention kernel (SDPA math) vs itself: {errors('stock_other_attention_kernel_relative_error')}.",
    ]
    if vs32 := f.get("vs_float32_relative_error"):
        lines.append(
            "Against a float32 run of the same NF4 weights: "
            + "; ".join(f"{name} " + ", ".join(f"t={t}: {e:.4f}" for t, e in v.items()) for name, v in vs32.items())
            + "."
        )
    for name, e in f.get("computes", {}).items():
        lines.append(
            f"Compute {name} (NF4 weights, {name} products) vs bf16: {errors_of(e['transformer_relative_error'])} "
            f"(vs NF4 in bf16: {errors_of(e['vs_nf4_bf16_relative_error'])}); PSNR {e['psnr_db']:.2f} dB."
        )
    if synthetic:
        lines.append(
            "On random weights only the transformer-level error means something; PSNR/SSIM need the real weights."
        )
    return lines


def markdown_table(report: dict) -> str:
    """A benchmark report (``python -m ernie_nf4.benchmark``) as markdown: heading, one row per mode, the headline
    ratios, the arithmetic floor, fidelity and the command."""
    lines = [*_report_heading(report), *_mode_rows(report["modes"])]
    if summary := ratios(report["modes"]):
        lines += ["", *summary]
    lines += _floor_lines(report)
    if report.get("fidelity"):
        lines += _fidelity_lines(report["fidelity"], report["synthetic"])
    if report.get("command"):
        lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def denoising_step_flops(config: dict, width: int, height: int, text_tokens: int, batch: int = 2) -> float:
    """Floating-point operations of one denoising step of the ErnieImage transformer (``batch`` 2: the conditional
    and unconditional halves of classifier-free guidance): per block q/k/v/out projections (8·h²), the gated MLP
    (6·h·f) and attention scores and values (4·S·h) per token, plus the text projection. Embeddings and norms are
    left out (under 1%)."""
    h, f, layers = config["hidden_size"], config["ffn_hidden_size"], config["num_layers"]
    image_tokens = (width // 16) * (height // 16)  # VAE factor 8 and a 2x2 patch packing: 16 px per token
    tokens = image_tokens + text_tokens
    per_token = layers * (8 * h * h + 6 * h * f + 4 * tokens * h)
    return batch * (tokens * per_token + text_tokens * 2 * config["text_in_dim"] * h)


def transformer_batch(guidance_scale: float, num_images: int = 1) -> int:
    """How many rows the transformer runs a step: each image's, twice over under classifier-free guidance (a
    guidance scale above 1, as the pipeline decides)."""
    return num_images * (2 if guidance_scale > 1.0 else 1)


def step_floor_line(
    config: dict, width: int, height: int, text_tokens: int, ms_per_step: float, tflops: float, batch: int = 2
) -> str:
    """The arithmetic floor of a denoising step at ``tflops`` (the card's bf16 matrix rate) for a transformer batch
    of ``batch`` and how far a measured step is from it."""
    flops = denoising_step_flops(config, width, height, text_tokens, batch)
    floor_ms = 1000 * flops / (tflops * 1e12)
    return (
        f"- denoising step vs the bf16 arithmetic floor at {width}x{height}: {flops / 1e12:.1f} TFLOP per step, "
        f"{floor_ms:.0f} ms at {tflops:.0f} TFLOP/s; measured {ms_per_step:.1f} ms = {ms_per_step / floor_ms:.2f}x"
    )
