"""Several GPUs: time 4 concurrent 1024x1024 requests with 1 replica vs 2 (``ernie_nf4.serving.replicas``).

    python scripts/gpu_replicas_bench.py [--package DIR] [--steps 50] [--requests 4] [--gpus 0,1]

Without ``--package`` it builds the full-size synthetic package first (as ``scripts/gpu_full_package.sh``). Each
configuration is warmed up with one request per replica, then times ``--requests`` requests sent at once (one
thread each); the images of the 2-replica run are compared with the 1-replica run's, seed by seed.
Target: 2 replicas finish in <= 0.6x the 1-replica time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_package(work: Path) -> Path:
    original, package = work / "ERNIE-Image", work / "ERNIE-Image-NF4"
    if not (package / "model_index.json").exists():
        run = [sys.executable, "-m", "ernie_nf4.synthetic", "--size", "full", "--device", "cuda", "--output"]
        subprocess.run([*run, str(original)], cwd=ROOT, check=True)
        quantize = [sys.executable, "quantize.py", "--source", str(original), "--output", str(package)]
        subprocess.run(quantize, cwd=ROOT, check=True)
    return package


def timed(service, requests) -> tuple[float, dict]:
    import torch

    results: dict[int, object] = {}

    def one(request):
        results[request.seed] = service.generate(request)

    threads = [threading.Thread(target=one, args=(r,)) for r in requests]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for index in range(torch.cuda.device_count()):
        torch.cuda.synchronize(index)
    return time.perf_counter() - start, results


def main() -> None:
    import numpy as np

    from ernie_nf4.request import GenerationRequest
    from ernie_nf4.serving.replicas import ReplicaService, parse_gpus
    from ernie_nf4.serving.service import ServiceConfig

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", help="an NF4 package folder (default: build the full-size synthetic one)")
    p.add_argument("--work", default="/tmp/ernie-full", help="where the synthetic package is built")
    p.add_argument("--gpus", default="0,1", help="the GPUs of the 2-replica run")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--use-pe", action="store_true", help="run the prompt enhancer too")
    args = p.parse_args()

    package = Path(args.package) if args.package else build_package(Path(args.work))
    devices = parse_gpus(args.gpus)
    config = ServiceConfig(model_dir=str(package), repo_id=None, source=None)

    def requests(first_seed):
        return [
            GenerationRequest(
                "an orange cat on a wooden table",
                width=1024,
                height=1024,
                num_inference_steps=args.steps,
                guidance_scale=4.0,
                seed=first_seed + i,
                use_pe=args.use_pe,
            )
            for i in range(args.requests)
        ]

    rows, images = [], {}
    for replicas in (devices[:1], devices):
        service = ReplicaService(config, replicas)
        service.load()
        timed(service, requests(10_000)[: len(replicas)])  # warm-up: one request per replica
        seconds, results = timed(service, requests(1234))
        images[len(replicas)] = {seed: np.asarray(r.images[0]) for seed, r in results.items()}
        used = sorted(set(service.served_by[len(replicas) :]))
        rows.append((len(replicas), ",".join(replicas), seconds, used))
        del service
        import torch

        torch.cuda.empty_cache()

    base = rows[0][2]
    print(f"\n{args.requests} concurrent 1024x1024 requests, {args.steps} steps, PE {'on' if args.use_pe else 'off'}")
    print(f"{'replicas':>8} {'devices':>14} {'seconds':>9} {'vs 1':>6} {'replicas used':>14}")
    for count, names, seconds, used in rows:
        print(f"{count:>8} {names:>14} {seconds:>9.2f} {seconds / base:>5.2f}x {str(used):>14}")
    same = all(np.array_equal(images[1][s], images[len(devices)][s]) for s in images[1])
    print(f"images identical to the 1-replica run for every seed: {same}")
    print(f"2 replicas in <= 0.6x the time: {'met' if rows[-1][2] / base <= 0.6 else 'NOT met'}")


if __name__ == "__main__":
    main()
