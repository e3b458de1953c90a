"""Shared utilities are written once: a structural check over src/privdiff.

Atomic writes (rename/replace, fsync) live in privdiff.utils.atomic; JSON sanitising in
privdiff.utils.jsonsafe; no module imports another module's underscore names.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "privdiff"

#: Files allowed to rename/replace/fsync themselves, and why.
OWN_DURABILITY = {
    "utils/atomic.py": "the one routine",
    "accounting/ledger.py": "SQLite create-then-link: fsync of the flock'ed file before os.link",
    "report/outputs.py": "moves staged files into place (record last); fsyncs a write test",
    "retrieval/private/index.py": "builds a whole index directory in a sibling temp dir, fsyncs each "
    "file (private 0600 writes), then renames the directory in one step",
}
#: Files being moved by other work on issue 16 (the retrieval boundary package, the demo); the
#: lead switches them to privdiff.utils after merging and then empties this set.
PENDING: set[str] = set()


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        yield rel, ast.parse(path.read_text(), filename=rel)


def _durability_calls(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f = node.func
        on_os = isinstance(f.value, ast.Name) and f.value.id == "os"
        if on_os and f.attr in ("replace", "rename", "fsync"):
            lines.append(node.lineno)
        # Path.replace(target) / Path.rename(target): one argument (str.replace takes two).
        elif not on_os and f.attr in ("replace", "rename") and len(node.args) == 1 and not node.keywords:
            lines.append(node.lineno)
    return lines


def test_only_the_atomic_module_renames_or_fsyncs():
    offenders = {
        rel: lines
        for rel, tree in _modules()
        if rel not in OWN_DURABILITY and rel not in PENDING and (lines := _durability_calls(tree))
    }
    assert offenders == {}


def test_no_private_json_sanitiser_or_lossy_default():
    """No json.dumps(default=...) hooks, no hand-written inf → "inf" mapping outside jsonsafe."""
    offenders = []
    for rel, tree in _modules():
        if rel in ("utils/jsonsafe.py",) or rel in PENDING:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("dump", "dumps")
            ):
                if any(k.arg == "default" for k in node.keywords):
                    offenders.append(f"{rel}:{node.lineno} json default=")
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and node.value.value == "inf":
                offenders.append(f"{rel}:{node.lineno} returns 'inf'")
    assert offenders == []


def test_no_module_imports_another_modules_underscore_names():
    offenders = []
    for rel, tree in _modules():
        if rel in PENDING:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("privdiff"):
                offenders += [
                    f"{rel}:{node.lineno} {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert offenders == []
