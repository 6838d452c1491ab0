"""Sane bounds on the sizes a component's config asks for, checked before any model is built from it.

A config is data that decides allocations: ``hidden_size`` 1e9 asks for hundreds of GB, ``num_layers`` 1e6 for
minutes of module building, a scheduler's ``num_train_timesteps`` 1e12 for terabytes. Every number in a config
(nested configs included) whose field names a width, a count or a length must lie between 0 and its bound;
the bounds are far above any ERNIE-Image component (widths 3072-12288, 36 layers, 131072 tokens, 1000 steps).
No number may be NaN or infinite (a scheduler's ``shift`` NaN leaves no timestep to run).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import PackageError

# (field name pattern, bound, what it is), first match wins
CONFIG_BOUNDS: tuple[tuple[re.Pattern, int, str], ...] = (
    (re.compile(r"^num_train_timesteps$"), 1 << 20, "training timesteps"),
    (re.compile(r"vocab_size$"), 1 << 21, "vocabulary entries"),
    (re.compile(r"max_position_embeddings$|^max_image_seq_len$"), 1 << 24, "positions"),
    (re.compile(r"^(num|n)_|_layers$|^layers_|_heads$|_groups$"), 1 << 12, "a count of layers, heads or groups"),
    (re.compile(r"(_size|_dim|_dims|channels)$"), 1 << 17, "a width"),
)  # fmt: skip
CONFIG_FILES = ("config.json", "scheduler_config.json")


def _bound(field: str) -> tuple[int, str] | None:
    return next(((bound, what) for pattern, bound, what in CONFIG_BOUNDS if pattern.search(field)), None)


def _numbers(config: dict, prefix: str = ""):
    """``(dotted field, leaf field name, number)`` of every number in ``config``, lists and nested objects too."""
    stack = [(prefix, key, value) for key, value in config.items()]
    while stack:
        where, key, value = stack.pop()
        dotted = f"{where}{key}"
        if isinstance(value, dict):
            stack.extend((f"{dotted}.", k, v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((where, key, v) for v in value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield dotted, key.rsplit(".", 1)[-1], value


def check_config_bounds(path: Path, config: object, fix: str) -> None:
    """Raise ``PackageError`` naming ``path``, the field and its bound when a number in ``config`` is out of range
    or not finite."""
    if not isinstance(config, dict):
        raise PackageError(f"{path}: must hold a JSON object; {fix}")
    for dotted, name, value in _numbers(config):
        if not math.isfinite(value):
            raise PackageError(f"{path}: field {dotted!r} is {value!r}; a config's numbers must be finite; {fix}")
        found = _bound(name)
        if found is None:
            continue
        bound, what = found
        if not 0 <= value <= bound:
            raise PackageError(
                f"{path}: field {dotted!r} is {value!r}, outside 0..{bound:,} ({what}); a config asking for that "
                f"cannot be an ERNIE-Image component; {fix}"
            )
