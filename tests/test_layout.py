"""The house rules, read off the source: short functions and modules, folders that import only the folders below."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from testkit.service import ROOT

PACKAGE = ROOT / "quay_dispatch"
# The package's folders, top to bottom (docs/architecture.md, "The layers"): a folder imports only folders below it,
# so that no two import each other.
PATH = ["admin", "web", "runtime", "quay_side", "acme", "delivery", "config", "outbox", "tools", "domain", "transport",
        "base"]
# The doors at the package's root, whose import paths are public (gunicorn's --worker-class, the image's health
# check, the CLI): they may import any folder.
ENTRY_POINTS = {"tls_worker", "cli", "healthcheck"}
MAX_ROOT_MODULES = 6
MAX_FOLDER_MODULES = 14
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 300


def _unit(path: Path) -> str:
    """The PATH entry a file of the package belongs to ("" for the package's __init__.py)."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0].replace("__init__", "")


def _imports(path: Path) -> set[str]:
    """The package's modules that `path` imports when it runs (not under `if TYPE_CHECKING:`), dotted."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    here = path.relative_to(ROOT).with_suffix("").parts
    package = here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                is_module = (ROOT / submodule.replace(".", "/")).with_suffix(".py").exists()
                found.add(submodule if is_module else module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.split(".")[0] == "quay_dispatch"}


def _files(*folders: Path) -> list[Path]:
    return sorted(path for folder in folders for path in folder.rglob("*.py"))


def test_every_import_goes_down_the_request_path():
    upward = []
    for path in _files(PACKAGE):
        unit = _unit(path)
        if unit in ENTRY_POINTS or unit == "":
            continue
        for name in _imports(path):
            target = name.split(".")[1] if "." in name else ""
            if target and target != unit and PATH.index(target) < PATH.index(unit):
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not upward


def test_every_module_has_its_place():
    units = {_unit(path) for path in _files(PACKAGE)} - {""}
    assert units == set(PATH) | ENTRY_POINTS


def test_few_modules_at_the_root_and_no_crowded_folder():
    root = [path.name for path in PACKAGE.glob("*.py")]
    crowded = {folder: count for folder in PATH
               if (count := len(list((PACKAGE / folder).rglob("*.py")))) > MAX_FOLDER_MODULES}
    assert len(root) <= MAX_ROOT_MODULES, root
    assert not crowded


def test_the_import_graph_has_no_cycle():
    graph = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): _imports(path)
             for path in _files(PACKAGE)}
    done, on_stack, cycles = set(), [], []

    def visit(module):
        if module in on_stack:
            cycles.append(on_stack[on_stack.index(module):] + [module])
            return
        if module in done:
            return
        on_stack.append(module)
        for name in graph.get(module, ()):
            visit(name)
        on_stack.pop()
        done.add(module)

    for module in graph:
        visit(module)
    assert not cycles


def test_architecture_md_walks_the_layers_in_this_order():
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## The layers", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"^\d+\. `([a-z_]+)/`", section, re.M)
    assert named == PATH


def test_functions_are_short_and_modules_too():
    long_functions, long_modules = [], []
    sources = _files(PACKAGE, ROOT / "bench", ROOT / "testkit") + [ROOT / name for name in
                                                                  ("app.py", "wsgi.py", "gunicorn.conf.py")]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
        if path.is_relative_to(PACKAGE) and len(path.read_text().splitlines()) > MAX_MODULE_LINES:
            long_modules.append(str(path.relative_to(ROOT)))
    assert (long_functions, long_modules) == ([], [])


def test_nothing_imports_a_test_module():
    """What tests share is testkit's; a test module is imported by pytest only."""
    sources = _files(PACKAGE, ROOT / "bench", ROOT / "testkit", ROOT / "tests")
    importers = [str(path.relative_to(ROOT)) for path in sources
                 if re.search(r"^\s*(from|import) tests\b", path.read_text(), re.M)]
    assert not importers


def test_only_config_reads_the_environment():
    """config.environment_settings is the one reader; gunicorn.conf.py only writes what the workers inherit."""
    readers = []
    for path in _files(PACKAGE) + [ROOT / "app.py", ROOT / "wsgi.py", ROOT / "gunicorn.conf.py"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            written = re.search(r"^\s*os\.environ\[(\"\w+\"|[A-Z_]+)\] = ", line)
            uses = re.search(r"os\.environ|getenv", line) and not written
            if uses and path != PACKAGE / "config" / "settings.py":
                readers.append(f"{path.relative_to(ROOT)}:{number}")
    assert not readers
