"""The JSON files of a package (``model_index.json``, configs, ``quantization_metadata.json``), read within bounds.

A file larger than ``MAX_JSON_BYTES`` or nested deeper than ``MAX_JSON_DEPTH`` is refused naming it, before any
code walks it recursively (Python's parser, ``copy.deepcopy``, the libraries' config classes).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PackageError

MAX_JSON_BYTES = 16 << 20
MAX_JSON_DEPTH = 32


def json_depth(value: object) -> int:
    """How deeply ``value`` nests lists and objects (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        stack.extend((child, depth + 1) for child in children)
    return deepest


def read_json(path: Path, fix: str) -> object:
    """The parsed content of ``path``; raises ``PackageError`` naming the file when it is too large, not JSON or
    nested too deeply. ``fix`` says what to do about it."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise PackageError(f"{path}: {size:,} bytes, larger than the {MAX_JSON_BYTES:,} a JSON file here may be; {fix}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except RecursionError:
        data = None
        too_deep = True
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PackageError(f"{path}: not valid JSON ({err}); {fix}") from None
    else:
        too_deep = json_depth(data) > MAX_JSON_DEPTH
    if too_deep:
        raise PackageError(f"{path}: JSON nested deeper than {MAX_JSON_DEPTH} levels; {fix}")
    return data
