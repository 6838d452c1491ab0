"""Turn ERNIE-Image (a Hub id or a local diffusers folder) into an NF4 package.

python quantize.py                                   # baidu/ERNIE-Image -> ERNIE-Image-NF4
python quantize.py --source ./ERNIE-Image --output ./ERNIE-Image-NF4 --overwrite
"""

from __future__ import annotations

import argparse
import logging
import sys

from ernie_nf4.quantize import DEFAULT_OUTPUT, DEFAULT_SOURCE, QUANTIZABLE, quantize_package


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="Hub id or local diffusers folder of ERNIE-Image")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="folder of the NF4 package to write")
    parser.add_argument(
        "--components",
        nargs="+",
        choices=QUANTIZABLE,
        default=list(QUANTIZABLE),
        help="components to quantize to NF4; the others are copied unchanged",
    )
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --source")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output once the new one is complete"
    )
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when present)")
    parser.add_argument(
        "--keep-vision",
        action="store_true",
        help="keep the text encoder's vision tower and projector (never used for text-to-image; ~0.22 GB in NF4)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        quantize_package(
            source=args.source,
            output=args.output,
            components=args.components,
            revision=args.revision,
            overwrite=args.overwrite,
            device=args.device,
            on_progress=None,
            keep_vision=args.keep_vision,
        )
    except (ValueError, FileExistsError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
