"""The Stats tab and Load model's answer in words, in the reader's language (``i18n.say``): the memory mode and why
in one sentence, the cards the package fits, load and run figures, the package's sizes, its recorded benchmarks,
and the size chart's rows and titles. Sizes on disk in GB, GPU memory in GiB, times in s."""

from __future__ import annotations

from ..formatting import format_bytes, readable_value
from ..stats import CARD_SIZES_GB, RUN_STAGES, card_fits
from .i18n import MESSAGES, say


def _words(key: str, lang: str, fallback: str) -> str:
    """``say(key)`` when the tables have ``key`` (a component or mode they name), else ``fallback`` as it is."""
    return say(key, lang) if key in MESSAGES["en"] else fallback


def _on_cpu(live) -> bool:
    return bool(live.device) and not live.device.startswith("cuda")


def memory_sentence(live, lang: str = "en") -> str:
    """Where the models live and why, in one sentence: on the CPU, as set with --memory-mode, or as ``auto`` chose
    it from the GPU memory free at load (the figure its reason recorded)."""
    mode = _words(f"stats_mode_{live.memory_mode}", lang, live.memory_mode)
    asked = not live.memory_mode_reason.startswith("auto")
    if not live.loaded:
        return say("stats_memory_later" if live.memory_mode == "auto" else "stats_memory_later_set", lang, mode=mode)
    if _on_cpu(live):
        return say("stats_memory_cpu", lang)
    if asked:
        return say("stats_memory_set", lang, mode=mode)
    if live.memory_usable_gib is None or live.memory_needs_gib is None:
        return say("stats_memory_auto_plain", lang, mode=mode)
    usable, needs = f"{live.memory_usable_gib:.1f}", f"{live.memory_needs_gib:g}"
    return say("stats_memory_auto", lang, mode=mode, usable=usable, needs=needs)


def compile_sentence(live, lang: str = "en") -> str:
    """Whether the transformer's blocks run compiled, from the service's status; empty before the load and on a CPU
    (compiling is a GPU matter there unless asked for)."""
    status = live.compile_status or ("compiled" if live.compiled else "")
    if status == "compiled" or (live.compiled and status.startswith("compiled")):  # in use, e.g. ahead of time
        key = "stats_compiled"
    elif status.startswith("compiled"):
        key = "stats_compile_ready"
    elif "compiling in the background" in status:
        key = "stats_compiling"
    elif not live.loaded or _on_cpu(live):
        return ""
    elif "compile failed" in status:
        key = "stats_compile_failed"
    elif "--no-compile" in status:
        key = "stats_compile_off"
    elif "not compiled yet" in status:
        key = "stats_compile_pending"
    else:
        key = "stats_uncompiled"
    return say(key, lang)


def compute_sentence(live, lang: str = "en") -> str:
    """How the transformer's linear layers multiply, once loaded, when not in bf16 (``--compute``)."""
    compute = getattr(live, "compute", "bf16")
    if not live.loaded or compute == "bf16":
        return ""
    if compute == "auto":
        from ..runtime.compute import AUTO_MIN_ROWS

        return say("stats_compute_auto", lang, tokens=f"{AUTO_MIN_ROWS:,}")
    return say("stats_compute", lang, format=compute.upper(), flag=f"--compute {compute}")


def _peak(live, lang: str) -> str:
    if live.last_run_peak_vram is not None:
        return say("stats_peak", lang, gib=f"{live.last_run_peak_vram.reserved_gib:.2f}")
    return say("stats_peak_cpu" if _on_cpu(live) else "stats_peak_unknown", lang)


def run_sentence(live, lang: str = "en") -> str:
    """The last run: its time in all, each stage that ran (the prompt enhancer only when it wrote), its peak."""
    seconds = live.last_run_seconds
    if seconds is None:
        return say("stats_no_run", lang)
    stages = []
    for stage in RUN_STAGES:
        if stage == "pe" and live.last_run_pe_tokens is None:
            continue  # the PE was off, or its rewrite came from the cache
        value = f"{getattr(seconds, stage):.2f}"
        stages.append(say(f"stats_stage_{stage}", lang, seconds=value, tokens=live.last_run_pe_tokens))
    separator = "，" if lang == "zh" else ", "
    total = f"{seconds.total:.2f}"
    return say("stats_last_run", lang, total=total, stages=separator.join(stages), peak=_peak(live, lang))


def live_paragraph(live, lang: str = "en", title: str | None = None) -> str:
    """A loaded (or not yet loaded) model, a sentence a line: memory, compiling, load time, last run."""
    loaded = say("stats_loaded", lang, seconds=f"{live.load_seconds:.1f}") if live.load_seconds else ""
    sentences = [
        memory_sentence(live, lang),
        compile_sentence(live, lang),
        compute_sentence(live, lang),
        loaded if live.loaded else say("stats_not_loaded", lang),
        run_sentence(live, lang),
    ]
    lines = [f"**{title or say('stats_this_process', lang)}**", ""]
    return "\n".join(lines + [f"- {sentence}" for sentence in sentences if sentence])


def load_answer(live, lang: str = "en") -> str:
    """What Load model answers: ready (and how long the load took), where the models live, whether compiled."""
    ready = say("stats_load_ready", lang, seconds=f"{live.load_seconds or 0:.1f}")
    sentences = [s for s in (ready, memory_sentence(live, lang), compile_sentence(live, lang)) if s]
    return ("" if lang == "zh" else " ").join(sentences)  # Chinese sentences end in "。" and need no space


def cards_sentence(package, lang: str = "en") -> str:
    """The cards the package fits per memory mode, from the peaks its metadata's benchmarks recorded."""
    fits = card_fits(package.benchmarks)
    if not fits:
        return say("stats_cards_unknown", lang, size=format_bytes(package.bytes_on_disk))
    entries = []
    for fit in fits:
        key, card = ("stats_card", fit.card_gb) if fit.card_gb is not None else ("stats_card_none", CARD_SIZES_GB[-1])
        gpu = fit.gpu or say("stats_a_cpu", lang)
        values = {"mode": fit.memory_mode, "peak": f"{fit.peak_gib:.2f}", "width": fit.width, "height": fit.height}
        entries.append(say(key, lang, card=card, gpu=gpu, **values))
    return say("stats_cards", lang, fits="；".join(entries) if lang == "zh" else "; ".join(entries))


def _provenance(package, lang: str) -> str:
    if package.verified:  # the weights hashed too, or only the small files
        return say("stats_verified" if package.provenance.startswith("verified") else "stats_checked", lang)
    if package.provenance == "cannot be loaded":
        return say("stats_unloadable", lang, why="; ".join(package.notes))
    return say("stats_not_verified", lang)


def _saved(before: int | None, after: int, lang: str) -> str:
    return say("stats_unknown", lang) if not before else f"{1 - after / before:.0%}"


def size_table(package, lang: str = "en") -> list[str]:
    """The package's parts: NF4 or unchanged, the original's size (when recorded), this package's, what it saves."""
    unknown = say("stats_unknown", lang)
    lines = [say("stats_table", lang), "|---|---|---:|---:|---:|"]
    for c in package.components:
        weights = say("stats_weights_nf4" if c.quantized else "stats_weights_kept", lang)
        before = unknown if c.bytes_before is None else format_bytes(c.bytes_before)
        after, saved = format_bytes(c.bytes_on_disk), _saved(c.bytes_before, c.bytes_on_disk, lang)
        lines.append(f"| {part_name(c.name, lang)} | {weights} | {before} | {after} | {saved} |")
    before = unknown if package.bytes_before is None else format_bytes(package.bytes_before)
    saved = _saved(package.bytes_before, package.bytes_on_disk, lang)
    lines.append(f"| {say('stats_total', lang)} | | {before} | {format_bytes(package.bytes_on_disk)} | {saved} |")
    return lines


def benchmark_tables(package, lang: str = "en") -> list[str]:
    """Each benchmark the package's metadata recorded: its settings and card, then one row per mode that ran."""
    lines = []
    for report in package.benchmarks.values():
        s = report.get("settings") or {}
        steps = s.get("num_inference_steps", s.get("steps"))
        gpu = report.get("gpu") or say("stats_a_cpu", lang)
        lines += ["", say("stats_bench", lang, width=s.get("width"), height=s.get("height"), steps=steps, gpu=gpu)]
        lines += ["", say("stats_bench_table", lang), "|---|---:|---:|---:|---:|"]
        for m in report.get("modes", []):
            if m.get("status") != "ok":
                continue
            peak = "–" if m.get("peak_reserved_gib") is None else f"{m['peak_reserved_gib']:.2f} GiB"
            mode = _words(f"stats_bench_{m['mode']}", lang, m["mode"])
            lines.append(
                f"| {mode} | {m['load_seconds']:.1f} s | {m['seconds']['total']:.2f} s | "
                f"{m['ms_per_step']:.0f} ms | {peak} |"
            )
    return lines


def package_lines(package, lang: str = "en") -> list[str]:
    """The package: where it comes from, the cards it fits, its sizes, another tool's metadata, its benchmarks."""
    lines = [
        say("stats_package", lang, name=package.name, provenance=_provenance(package, lang)),
        "",
        cards_sentence(package, lang),
        "",
        *size_table(package, lang),
    ]
    if package.bytes_before is None:
        lines += ["", say("stats_sizes_unknown", lang)]
    if package.foreign_metadata is not None:
        lines += ["", say("stats_foreign", lang), ""]
        if isinstance(package.foreign_metadata, dict):
            lines += [f"- {key}: {readable_value(value)}" for key, value in package.foreign_metadata.items()]
        else:
            lines.append(f"- {readable_value(package.foreign_metadata)}")
    return lines + benchmark_tables(package, lang)


def stats_markdown(stats, lang: str = "en") -> str:
    """The Stats tab for ``stats.ServiceStats`` in ``lang``."""
    model = stats.model.replace(say("model_tiny"), say("model_tiny", lang), 1)  # the service names it in English
    lines = [f"**{model}**", "", live_paragraph(stats.live, lang)]
    for number, replica in enumerate(stats.replicas):
        lines += ["", live_paragraph(replica, lang, say("stats_replica", lang, number=number, device=replica.device))]
    lines.append("")
    if stats.package is None:
        lines.append(say("stats_no_package", lang))
    else:
        lines += package_lines(stats.package, lang)
    return "\n".join(lines)


def part_name(name: str, lang: str = "en") -> str:
    """A package folder's name (``text_encoder``) in words; one the tables do not know stays as it is."""
    return _words(f"stats_part_{name}", lang, name)


def chart_columns(lang: str = "en") -> list[str]:
    """The chart's columns: the bar, its size, and its weights' kind, this one named in ``lang``: the chart's hover
    text and its bars' names for screen readers say that column by its name (the axes' and legend's titles come
    from ``chart_titles``)."""
    return ["bar", "size_gb", say("stats_chart_color", lang)]


def chart_rows(stats, lang: str = "en") -> list[dict]:
    """Rows of the original-vs-package bar chart (``chart_columns``): each part's original (when its size is known)
    and package bar."""
    kind = chart_columns(lang)[2]
    rows = []
    for c in stats.package.components if stats.package else []:
        name = part_name(c.name, lang)
        if c.bytes_before is not None:
            original = say("stats_weights_original", lang)
            rows.append({"bar": f"{name} · {original}", "size_gb": c.bytes_before / 1e9, kind: original})
        weights = say("stats_weights_nf4" if c.quantized else "stats_weights_kept", lang)
        rows.append({"bar": f"{name} · {weights}", "size_gb": c.bytes_on_disk / 1e9, kind: weights})
    return rows


def chart_titles(lang: str = "en") -> dict:
    """The chart's title, axis and legend titles in ``lang`` (``gr.BarPlot`` keyword arguments)."""
    return {
        "title": say("stats_chart_title", lang),
        "x_title": say("stats_chart_x", lang),
        "y_title": say("stats_chart_y", lang),
        "color_title": say("stats_chart_color", lang),
    }
