"""Does AOTInductor load at all here? A two-layer model through torch's own ``aoti_compile_and_package`` and
``aoti_load_package``, each case in a fresh process, so that a crash is an exit status and not the end of the probe.

    python scripts/gpu_aoti_probe.py                      # cpu and cuda, plain torch
    python scripts/gpu_aoti_probe.py --first sklearn diffusers ernie_nf4.runtime.aoti

``--first`` imports those modules before torch compiles and loads (each import set is a case of its own), to find
out whether a library loaded into the same process makes the load crash. Prints one line a case: the exit status
(-11 is a segmentation fault), and the last line the case printed. Exits 1 when a case without ``--first`` fails.
Uses nothing of this project: the ahead-of-time blocks (``ernie_nf4.runtime.aoti``) need this to work first.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys


def case(device: str, first: list[str]) -> None:
    """Compile and load the small model on ``device`` after importing ``first``; print each stage as it ends."""
    for name in first:
        importlib.import_module(name)
    import io

    import torch

    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.SiLU(), torch.nn.Linear(256, 64))
    model = model.to(device, torch.bfloat16).eval()
    x = torch.randn(2, 40, 256, device=device, dtype=torch.bfloat16)
    tokens = torch.export.Dim("tokens", min=2, max=4096)
    program = torch.export.export(model, (x,), dynamic_shapes=({1: tokens},), strict=False)
    buffer = io.BytesIO()
    torch._inductor.aoti_compile_and_package(program, package_path=buffer)
    print("compiled", flush=True)
    loaded = torch._inductor.aoti_load_package(buffer)
    print("loaded", flush=True)
    with torch.no_grad():
        error = float((loaded(x) - model(x)).float().norm() / model(x).float().norm())
    print(f"ran: relative error {error:.2e}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="devices to compile for")
    p.add_argument("--first", nargs="*", default=[], help="modules imported first, one case each")
    p.add_argument("--case", nargs="+", help=argparse.SUPPRESS)  # a child: DEVICE [MODULE]
    p.add_argument("--timeout", type=float, default=300, help="seconds a case may take")
    args = p.parse_args()
    if args.case:
        case(args.case[0], args.case[1:])
        return 0
    plain_failed = False
    for device in args.devices:
        for first in [[], *([name] for name in args.first)]:
            command = [sys.executable, "-X", "faulthandler", __file__, "--case", device, *first]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
                status, lines = done.returncode, (done.stdout + done.stderr).strip().splitlines()
            except subprocess.TimeoutExpired:
                status, lines = "timeout", []
            stages = [line for line in lines if line.startswith(("compiled", "loaded", "ran"))]
            label = f"{device}" + (f" after import {first[0]}" if first else "")
            print(f"{label:45} exit {status}: {stages[-1] if stages else (lines[-1] if lines else '')}", flush=True)
            plain_failed |= not first and status != 0
    return 1 if plain_failed else 0


if __name__ == "__main__":
    sys.exit(main())
