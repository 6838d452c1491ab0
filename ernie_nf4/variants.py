"""The ERNIE-Image variants this project serves: where each original lives, its published NF4 package (if any),
and the sampling defaults its authors recommend. One definition for quantize.py, the service and the app."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidArgument


@dataclass(frozen=True)
class Variant:
    name: str
    source: str  # Hub id of the bf16 original
    repo_id: str | None  # Hub id of a published NF4 package, None when none exists
    num_inference_steps: int
    guidance_scale: float
    default_package_dir: str


VARIANTS = {
    "ernie-image": Variant(
        "ernie-image", "baidu/ERNIE-Image", "Xiejiehang/ERNIE-Image-NF4", 50, 4.0, "ERNIE-Image-NF4"
    ),
    # No NF4 Turbo package is published: the app builds one from the original (quantize.py --variant).
    "ernie-image-turbo": Variant("ernie-image-turbo", "baidu/ERNIE-Image-Turbo", None, 8, 1.0, "ERNIE-Image-Turbo-NF4"),
}
DEFAULT_VARIANT = "ernie-image"


def get_variant(name: str, argument: str = "variant") -> Variant:
    variant = VARIANTS.get(str(name).strip().lower())
    if variant is None:
        raise InvalidArgument(f"{argument} must be one of {list(VARIANTS)}, got {name!r}")
    return variant
