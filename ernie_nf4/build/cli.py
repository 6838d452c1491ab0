"""Turn ERNIE-Image (a Hub id or a local diffusers folder) into an NF4 package (``python quantize.py``,
``ernie-nf4-quantize``).

python quantize.py                                   # baidu/ERNIE-Image -> ERNIE-Image-NF4
python quantize.py --variant ernie-image-turbo       # baidu/ERNIE-Image-Turbo -> ERNIE-Image-Turbo-NF4
python quantize.py --source ./ERNIE-Image --output ./ERNIE-Image-NF4 --overwrite
python quantize.py --output ./ERNIE-Image-NF4 --push-to-hub USER/REPO   # upload a package you have
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ernie_nf4.atomic import cannot_write_in
from ernie_nf4.build.publish import DEFAULT_TIMEOUT, check_repo_id, check_timeout, push_to_hub
from ernie_nf4.build.quantize import QUANTIZABLE, quantize_package
from ernie_nf4.errors import ErnieNF4Error
from ernie_nf4.variants import DEFAULT_VARIANT, VARIANTS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python quantize.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--variant",
        choices=list(VARIANTS),
        default=DEFAULT_VARIANT,
        help="which ERNIE-Image: sets the default --source and --output",
    )
    parser.add_argument(
        "--source", default=None, help="Hub id or local diffusers folder of ERNIE-Image (default: the variant's)"
    )
    parser.add_argument("--output", default=None, help="folder of the NF4 package to write (default: the variant's)")
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
    add_publish_arguments(parser)
    return parser


# --- Publishing (--push-to-hub): kept apart from the build flags ----------------------------------------------


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("publish to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`)")
    group.add_argument(
        "--push-to-hub",
        metavar="USER/REPO",
        default=None,
        help="upload the package to this Hub model repo (created if missing); an existing --output package "
        "is uploaded as it is unless --overwrite; a repo holding other files needs --overwrite",
    )
    group.add_argument("--private", action="store_true", help="create the repo private (with --push-to-hub)")
    group.add_argument(
        "--commit-message",
        "--revision-message",
        dest="commit_message",
        metavar="TEXT",
        default=None,
        help="message of the upload commit (with --push-to-hub)",
    )
    group.add_argument(
        "--hub-timeout",
        type=_seconds,
        metavar="SECONDS",
        default=DEFAULT_TIMEOUT,
        help=f"seconds each request waits for the Hub before the push stops (default: {DEFAULT_TIMEOUT:g})",
    )


def _seconds(text: str) -> float:
    try:
        return check_timeout(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0") from None


def publish(args: argparse.Namespace) -> None:
    """Push ``args.output`` when ``--push-to-hub`` was given."""
    if not args.push_to_hub:
        return

    url = push_to_hub(
        args.output,
        args.push_to_hub,
        private=args.private,
        commit_message=args.commit_message,
        overwrite=args.overwrite,
        timeout=args.hub_timeout,
    )
    print(f"pushed {args.output} to {args.push_to_hub}: {url}")


def upload_only(args: argparse.Namespace) -> bool:
    """``--push-to-hub`` on an existing --output without --overwrite: upload it as it is, no rebuild."""
    return bool(args.push_to_hub) and not args.overwrite and Path(args.output).exists()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    variant = VARIANTS[args.variant]
    for flag, what in (("source", "a folder or a Hub id"), ("output", "the package's folder")):
        if getattr(args, flag) is not None and not getattr(args, flag).strip():
            parser.error(f"--{flag} is empty; give {what}, or leave it out for the variant's default")
    args.source = args.source or variant.source
    args.output = args.output or variant.default_package_dir
    if (args.private or args.commit_message) and not args.push_to_hub:
        parser.error("--private and --commit-message go with --push-to-hub USER/REPO")
    problem = None if upload_only(args) else cannot_write_in(Path(args.output).parent)
    if problem:
        parser.error(f"--output {args.output}: {problem}; give a folder this user can write")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.push_to_hub:
            check_repo_id(args.push_to_hub)  # before a build, not after it
        if not upload_only(args):
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
        publish(args)
    except KeyboardInterrupt:
        print(f"interrupted: nothing was written to {args.output} (an old package there is kept)", file=sys.stderr)
        return 130
    except (ErnieNF4Error, ValueError, FileExistsError, RuntimeError, OSError) as err:
        print(f"error: {err or type(err).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
