"""The package's layout is its map: vocabulary at the root, one concern per subpackage, imports that follow the
layers each subpackage's ``__init__`` declares, no cycles, and imports inside functions only to defer heavy ones."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "ernie_nf4"
HEAVY = {"torch", "gradio", "diffusers", "transformers", "triton", "bitsandbytes", "huggingface_hub", "spaces"}
HEAVY |= {"tokenizers", "safetensors", "PIL", "numpy", "pandas", "starlette", "accelerate", "yaml"}
HEAVY |= {"cudnn"}  # optional (nvidia-cudnn-frontend): imported only where a Hopper GPU may use it


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The ernie_nf4 modules an import names (``from . import a, b`` names modules a and b)."""
    if node.level:
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("ernie_nf4"):
        return []
    named = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES]
    return named or [target]


def _imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported name, inside a function, line) for every import in ``module``; ernie_nf4 names resolved."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom):
                names = _resolve(module, child) or [child.module or ""]
                found.extend((name, in_function, child.lineno) for name in names)
            elif isinstance(child, ast.Import):
                found.extend((alias.name, in_function, child.lineno) for alias in child.names)
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(ast.parse(MODULES[module].read_text()), False)
    return found


def _heavy_at_import(module: str, seen: set[str] | None = None) -> bool:
    """Whether importing ``module`` imports a heavy library (through its module-level imports)."""
    seen = set() if seen is None else seen
    if module in seen:
        return False
    seen.add(module)
    for name, inside, _ in _imports(module):
        if inside:
            continue
        if name.split(".")[0] in HEAVY:
            return True
        if name in MODULES and _heavy_at_import(name, seen):
            return True
    return False


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) == 1 or (len(parts) == 2 and MODULES[module].name != "__init__.py"):
        return None  # a root module
    return parts[1]


def test_the_root_holds_only_the_shared_vocabulary():
    root_modules = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")
    assert len(root_modules) <= 12, root_modules
    subpackages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert len(subpackages) >= 6, subpackages


def test_root_modules_import_no_subpackage():
    for module in MODULES:
        if _subpackage(module) is None:
            for name, _, line in _imports(module):
                assert not (name.startswith("ernie_nf4.") and _subpackage(name)), f"{module}:{line} imports {name}"


@pytest.mark.parametrize("package", sorted({_subpackage(m) for m in MODULES} - {None}))
def test_each_subpackage_imports_only_what_its_init_allows(package):
    init = ROOT / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert len(doc.splitlines()) >= 3, f"{init}: say in a few lines what it owns"
    match = re.search(r"May import: (.+?)\.\s*$", doc, re.S)
    assert match, f"{init}: no 'May import:' line"
    allowed = set(re.findall(r"``(\w+)``", match.group(1))) | {package}
    for module in MODULES:
        if _subpackage(module) != package:
            continue
        for name, _, line in _imports(module):
            if name.startswith("ernie_nf4.") and (other := _subpackage(name)) is not None:
                assert other in allowed, f"{module}:{line} imports {name}; {init} allows {sorted(allowed)}"


def test_no_import_cycle_counting_imports_inside_functions():
    graph = {m: {n for n, _, _ in _imports(m) if n in MODULES and n != m} for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            walk(module)


def test_imports_inside_functions_only_defer_heavy_libraries():
    offenders = []
    for module in MODULES:
        for name, inside, line in _imports(module):
            if not inside:
                continue
            if name in MODULES:
                if not _heavy_at_import(name):
                    offenders.append(f"{module}:{line} imports {name} inside a function")
            elif name.split(".")[0] not in HEAVY and name.split(".")[0] != "ernie_nf4":
                offenders.append(f"{module}:{line} imports {name} inside a function")
    assert not offenders, "\n".join(offenders)


def test_importing_the_library_loads_no_heavy_library():
    light = [m for m in MODULES if not _heavy_at_import(m) and not m.endswith("__main__")]
    code = "import sys\n" + "".join(f"import {m}\n" for m in sorted(light))
    code += f"print(sorted(set(sys.modules) & set({sorted(HEAVY)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert len(light) > len(MODULES) // 2


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_is_longer_than_60_lines():
    kernels = ROOT / "prompt_enhancer" / "kernels" / "triton_kernels.py"  # Triton kernels read best whole
    files = [ROOT.parent / "app.py", ROOT.parent / "quantize.py"] + [p for p in MODULES.values() if p != kernels]
    long = [
        f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in files
        for node in _functions(path)
        if node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, "\n".join(long)


# How the team works is no business of the product's words: no tracker numbers, review rounds or borrowed machines.
PROCESS_WORDS = re.compile(
    r"\bissues? ?#?\d+|\b(first|second|third|fourth|fifth|closing) (pass|run of issue)\b|\bpass(es)? ?\d\b|"
    r"\blent\b|\bseed[ -]readme|\b(previous|earlier) session\b|\bthis session\b(?!.s (running|queued))",
    re.I,
)


def test_no_words_of_the_teams_process_in_code_docs_or_tests():
    repo = ROOT.parent
    paths = [repo / "README.md", repo / "app.py", repo / "quantize.py", repo / "pyproject.toml"]
    for folder, patterns in (("ernie_nf4", ("*.py",)), ("tests", ("*.py",)), ("scripts", ("*",)), ("docs", ("*",))):
        for pattern in patterns:
            paths += [p for p in (repo / folder).rglob(pattern) if p.is_file()]
    hits = []
    for path in paths:
        if path == Path(__file__).resolve() or path.suffix in {".png", ".jpg", ".pyc"}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if match := PROCESS_WORDS.search(line):
                hits.append(f"{path.relative_to(repo)}:{number}: {match.group(0)!r}")
        if "issue" in path.name.lower():
            hits.append(f"{path.relative_to(repo)}: file name")
    assert not hits, "\n".join(hits)
