"""Seconds on a CUDA GPU from ``python app.py`` to the first finished image, cold and warm.

    python scripts/gpu_first_image.py [/tmp/ernie-full/ERNIE-Image-NF4] [--out first_image.json]
                                      [--steps 50] [--max-pe-tokens 256] [--stock-seconds 29.4]

Four fresh processes, one after another: the default flags (the blocks compile in the background), cold then warm,
and ``--no-compile``, cold then warm. Cold: new, empty TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR, and the
package's files dropped from the page cache (``posix_fadvise(DONTNEED)``, as ``ernie_nf4.benchmark.run`` does); warm:
the same cache folders again, the files left in the page cache.

Each process runs what ``python app.py`` runs as it starts (``webapp.cli``: ``parse_args``, ``config_from_args``,
``build_service``, ``start_loading``), without Gradio (it need not be installed on the GPU host). In the app, Gradio's
own start-up (about 4.5 s to a served page on a 2-core CPU: tests/test_app.py::test_the_app_serves_seconds_after_it_
starts) runs while the model loads in the background. The process submits a 1024x1024 request at once (it waits
for the load, as the app's first request does), a second as soon as the first is done (steady state), and in the
default mode, when the second still ran eagerly, a third once compiling is done. Every time is counted from the
process's spawn. The prompt enhancer runs, capped at ``--max-pe-tokens`` (random weights never stop it earlier).

Checks (exit status 1 when one fails): every run finished; no process imported gradio; the default mode never
failed to compile and no block ran eagerly once compiled; the warm default run's second image was compiled;
``--no-compile`` never compiled. Prints a table last and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "an orange cat on a wooden table, a sheet of paper in front of it that reads Hello ERNIE-Image NF4"
RUNS = (("default", "cold"), ("default", "warm"), ("no-compile", "cold"), ("no-compile", "warm"))
BUDGET_SECONDS = 450  # all four processes: under 8 minutes on an H100


def emit(event: str, **fields) -> None:
    print("EVENT " + json.dumps({"event": event, "time": time.time(), **fields}), flush=True)


def child(spec: dict) -> None:
    """One app start: what ``python app.py`` does before serving, then the requests."""
    emit("python_started")
    from ernie_nf4.request import GenerationRequest
    from ernie_nf4.webapp import cli  # what app.py imports: diffusers and transformers come with the load

    emit("imported")
    if not spec["read_ahead"]:  # for comparison: a share of no memory lets no weight file be read ahead
        import ernie_nf4.package.read_ahead as read_ahead_module

        read_ahead_module.MEMORY_SHARE = 0.0
    args = cli.parse_args(spec["app_args"])
    service = cli.build_service(args, cli.config_from_args(args))
    preloading = cli.start_loading(service, args) is not None
    emit("app_started", preloading=preloading, gradio_imported="gradio" in sys.modules)

    def watch_compile() -> None:  # when the background compile ends (the service makes it during the load)
        while not service.loaded:
            time.sleep(0.05)
        from ernie_nf4.runtime.fast_transformer import CompileState  # imported by the load: no work of its own now

        ahead = service.compiler.ahead if service.compiler is not None else None  # a first compile's helper
        if ahead is not None:
            ahead.wait()
            emit("compile_ahead_done", result=ahead.result, error=ahead.error)

        while service.compiler is not None and service.compiler.state is CompileState.COMPILING:
            time.sleep(0.05)
        if service.compiler is not None:
            emit("compile_done", state=service.compiler.state.value, seconds=service.compiler.seconds)

    threading.Thread(target=watch_compile, daemon=True).start()

    def request(number: int) -> None:
        emit("request_submitted", number=number)
        result = service.generate(
            GenerationRequest(
                PROMPT,
                width=spec["size"],
                height=spec["size"],
                num_inference_steps=spec["steps"],
                seed=1234 + number,
                use_pe=True,
            )
        )
        compiler = service.compiler
        emit(
            "image_done",
            number=number,
            compiled=service.last_run_compiled,
            seconds=result.seconds.as_dict(),
            pe_tokens=result.enhancement.tokens if result.enhancement else None,
            compile_status=service.compile_status,
            fallback_calls=compiler.fallback_calls if compiler else 0,
            load_seconds=service.load_seconds,
            peak_reserved_gib=result.peak_vram.reserved_gib if result.peak_vram else None,
        )

    request(1)  # submitted at start: it waits for the background load
    request(2)
    if spec["mode"] == "default" and not service.last_run_compiled and service.compiler is not None:
        service.compiler.wait(timeout=spec["compile_wait"])
        request(3)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    emit("done", compile_status=service.compile_status, gpu=gpu)
    sys.stdout.flush()
    os._exit(0)  # no waiting on daemon threads or compile workers at exit


def run_one(mode: str, cache: str, args, caches: Path, timeout: float) -> dict:
    from ernie_nf4.benchmark.run import evict_page_cache

    record = {"mode": mode, "cache": cache, "status": "ok", "events": []}
    if cache == "cold":
        for sub in ("inductor", "triton"):
            (caches / mode / sub).mkdir(parents=True, exist_ok=False)  # fresh: each mode has its own
        record["page_cache_dropped"] = evict_page_cache(Path(args.package))
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(caches / mode / "inductor"),
        "TRITON_CACHE_DIR": str(caches / mode / "triton"),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    app_args = ["--model-dir", args.package, "--max-pe-tokens", str(args.max_pe_tokens), *args.app_args.split()]
    app_args += ["--no-compile"] if mode == "no-compile" else []  # last: it wins over a --compile in --app-args
    spec = {
        "mode": mode,
        "app_args": app_args,
        "size": args.size,
        "steps": args.steps,
        "compile_wait": max(30.0, timeout / 2),
        "read_ahead": args.read_ahead,
    }
    log = caches / f"{mode}-{cache}.log"
    print(f"\n== {mode}, {cache} cache: python app.py {' '.join(app_args)} (log: {log})", flush=True)
    spawned = time.time()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith("EVENT "):
                event = json.loads(line[6:])
                event["at"] = round(event.pop("time") - spawned, 2)
                record["events"].append(event)
                print(f"  {event['at']:7.1f} s  {json.dumps(event)}", flush=True)
        proc.wait()
    finally:
        timer.cancel()
    if proc.returncode != 0 or not any(e["event"] == "done" for e in record["events"]):
        tail = log.read_text(errors="replace")[-2000:]
        killed = ", killed at the time limit" if proc.returncode < 0 else ""
        record["status"] = f"failed (exit {proc.returncode}{killed})"
        print(f"  {record['status']}; log tail:\n{tail}", flush=True)
    return summarize(record)


def summarize(record: dict) -> dict:
    events = record["events"]
    images = {e["number"]: e for e in events if e["event"] == "image_done"}
    started = next((e for e in events if e["event"] == "app_started"), {})
    compile_done = next((e for e in events if e["event"] == "compile_done"), None)
    record.update(
        python_started_at=next((e["at"] for e in events if e["event"] == "python_started"), None),
        app_started_at=started.get("at"),
        gradio_imported=started.get("gradio_imported"),
        load_seconds=images[1]["load_seconds"] if 1 in images else None,
        first_image_at=images[1]["at"] if 1 in images else None,
        compile_done_at=compile_done["at"] if compile_done else None,
        compile_state=compile_done["state"] if compile_done else None,
        compile_seconds=compile_done["seconds"] if compile_done else None,
        requests=[
            {
                "number": n,
                "done_at": e["at"],
                "compiled": e["compiled"],
                "total_seconds": round(e["seconds"]["total"], 2),
                "denoising_seconds": round(e["seconds"]["denoising"], 2),
                "pe_seconds": round(e["seconds"]["pe"], 2),
                "fallback_calls": e["fallback_calls"],
                "peak_reserved_gib": e["peak_reserved_gib"],
            }
            for n, e in sorted(images.items())
        ],
        compile_status=next((e["compile_status"] for e in events if e["event"] == "done"), None),
        gpu=next((e["gpu"] for e in events if e["event"] == "done"), None),
    )
    return record


def checks(runs: list[dict]) -> list[tuple[str, bool]]:
    by = {(r["mode"], r["cache"]): r for r in runs}
    out = [
        ("every run finished", all(r["status"] == "ok" for r in runs)),
        ("no run imported gradio", not any(r.get("gradio_imported") for r in runs)),
    ]
    default = [r for r in runs if r["mode"] == "default"]
    out.append(("default: compiling never failed", all(r.get("compile_state") != "failed" for r in default)))
    out.append(
        (
            "default: no block ran eagerly once compiled",
            all(q["fallback_calls"] == 0 for r in default for q in r.get("requests", [])),
        )
    )
    warm = by.get(("default", "warm"), {}).get("requests", [])
    if ("default", "warm") in by:
        out.append(("default, warm cache: the first image was compiled", len(warm) >= 1 and warm[0]["compiled"]))
        out.append(("default, warm cache: the second image was compiled", len(warm) >= 2 and warm[1]["compiled"]))
    eager = [r for r in runs if r["mode"] == "no-compile"]
    if eager:
        out.append(
            (
                "--no-compile: never compiled",
                all(r.get("compile_status") == "eager: compile off (--no-compile)" for r in eager)
                and not any(q["compiled"] for r in eager for q in r.get("requests", [])),
            )
        )
    return out


def table(runs: list[dict], stock_seconds: float) -> str:
    def cell(value, fmt="{:.1f}"):
        return "–" if value is None else fmt.format(value)

    def req(r, n):
        q = next((q for q in r.get("requests", []) if q["number"] == n), None)
        if q is None:
            return "–"
        path = "compiled" if q["compiled"] else "eager"
        return f"{q['total_seconds']:.1f} ({path}, {q['total_seconds'] / stock_seconds:.2f}x)"

    def against_warm(r, since):  # the first image's time against the run's last (warm) image
        last = r.get("requests", [])[-1:]
        if r.get("first_image_at") is None or since is None or not last:
            return "–"
        return f"{(r['first_image_at'] - since) / last[0]['total_seconds']:.2f}x"

    rows = [
        "| flags | caches | app up s | loaded in s | first image at s | image 1 s | image 2 s | image 3 s | "
        "compile done at s | first / last image, from spawn | from app up | status |",
        "|---|---|---:|---:|---:|---|---|---|---:|---:|---:|---|",
    ]
    for r in runs:
        rows.append(
            f"| {'--no-compile' if r['mode'] == 'no-compile' else '(default)'} | {r['cache']} | "
            f"{cell(r.get('app_started_at'))} | {cell(r.get('load_seconds'))} | {cell(r.get('first_image_at'))} | "
            f"{req(r, 1)} | {req(r, 2)} | {req(r, 3)} | {cell(r.get('compile_done_at'))} | "
            f"{against_warm(r, 0.0)} | {against_warm(r, r.get('app_started_at'))} | {r['status']} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", nargs="?", default="/tmp/ernie-full/ERNIE-Image-NF4")
    parser.add_argument("--out", default="first_image.json", help="where the JSON goes")
    parser.add_argument("--size", type=int, default=1024, help="width and height of the images")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--max-pe-tokens", type=int, default=256)
    parser.add_argument("--stock-seconds", type=float, default=29.4, help="stock diffusers NF4, end to end (H100)")
    parser.add_argument(
        "--app-args",
        default="",
        help='more app flags, e.g. "--memory-mode low-vram" (a CPU dry run: "--device cpu '
        '--preload --compile" on a tiny package)',
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        default=[f"{mode}:{cache}" for mode, cache in RUNS],
        choices=[f"{mode}:{cache}" for mode, cache in RUNS],
        help="which starts, in order (a warm start after its cold one reuses that one's caches)",
    )
    parser.add_argument(
        "--no-read-ahead",
        dest="read_ahead",
        action="store_false",
        help="load without reading the weight files ahead (package.read_ahead), for comparison",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    if not (Path(args.package) / "model_index.json").exists():
        sys.exit(f"error: no package at {args.package} (bash scripts/gpu_full_package.sh builds it)")
    sys.path.insert(0, str(ROOT))
    from ernie_nf4.system import library_versions  # no CUDA in this process: the runs have the GPU to themselves

    print(f"{library_versions()}; package {args.package}", flush=True)
    print("Each run is a fresh process doing what `python app.py` does at start, without Gradio (not installed).")
    deadline = time.monotonic() + BUDGET_SECONDS
    runs = []
    with tempfile.TemporaryDirectory(prefix="ernie-first-image-") as tmp:
        chosen = [tuple(run.split(":")) for run in args.runs]
        for index, (mode, cache) in enumerate(chosen):
            left = deadline - time.monotonic()
            timeout = min(240.0, left / (len(chosen) - index) * 1.6, left)
            if timeout < 30:
                runs.append({"mode": mode, "cache": cache, "status": "skipped: time budget spent"})
                continue
            runs.append(run_one(mode, cache, args, Path(tmp), timeout))
    results = checks(runs)
    report = {
        "gpu": next((r["gpu"] for r in runs if r.get("gpu")), None),
        "versions": library_versions(),
        "package": args.package,
        "settings": {
            "size": f"{args.size}x{args.size}",
            "app_args": args.app_args,
            "steps": args.steps,
            "guidance": 4.0,
            "use_pe": True,
            "max_pe_tokens": args.max_pe_tokens,
            "read_ahead": args.read_ahead,
            "stock_nf4_seconds": args.stock_seconds,
            "gradio": "not imported: the app's start-up functions from webapp.cli, without the UI",
        },
        "runs": runs,
        "checks": [{"check": name, "ok": ok} for name, ok in results],
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nWrote {args.out}. Times from process spawn; ratios against stock NF4's {args.stock_seconds} s.\n")
    for name, ok in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print()
    print(table(runs, args.stock_seconds))
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
