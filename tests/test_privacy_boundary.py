"""The privacy boundary, checked by reading the tree: only ``privdiff.retrieval.private`` reads private rows.

Every module under ``src/privdiff`` is parsed with :mod:`ast` (nothing is imported) and code
outside the boundary package fails the test when it

(a) imports a submodule of the boundary (``privdiff.retrieval.private.index`` …) or an underscore
    name from it: only the package itself (its ``__init__`` exports) may be imported;
(b) reads an underscore attribute of anything but ``self``/``cls``. The boundary's own internal
    names (every ``self._x`` its classes set, ``__slots__`` entries, and ``_vectors``, ``_index``,
    ``_rows``) are refused on *any* other object. Other names are allowed only inside a class that
    sets ``self._x`` itself (a class reading its own kind's state, e.g. a factory classmethod);
(c) names the escape hatch ``unsafe_nonprivate_rows`` outside :data:`ESCAPE_HATCH_ALLOWED`;
(d) subclasses a class defined in the boundary (a subclass could override the mechanism's steps
    or read ``self._index``: the audit composes strategy objects instead);
(e) calls a backend method that returns noiseless private aggregates (:data:`NOISELESS_METHODS`:
    ``topk_sums`` gives exact top-k sums before the mechanism adds noise) outside
    :data:`ESCAPE_HATCH_ALLOWED`: the backends are exported so the mechanism can be configured with
    one, and only ``DPRetriever`` may call them.

The boundary package must exist and export exactly :data:`EXPORTS`. To check another tree (e.g.
the original one), point ``PRIVDIFF_BOUNDARY_ROOT`` at its ``src/privdiff`` directory.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

BOUNDARY = "retrieval/private"  # relative to the privdiff package directory
BOUNDARY_MODULE = "privdiff.retrieval.private"
ESCAPE_HATCH = "unsafe_nonprivate_rows"
#: Modules (relative to src/privdiff) allowed to call the escape hatch, and why.
ESCAPE_HATCH_ALLOWED = {
    "evaluation/baselines.py": "the ε = ∞ non-private baseline reads private rows by definition",
}
#: Backend methods whose result is a noiseless function of private rows (rule (e)).
NOISELESS_METHODS = {"topk_sums", "candidates"}
#: Index internals refused on any object other than self/cls, whatever the boundary declares.
ALWAYS_INTERNAL = {"_vectors", "_index", "_rows"}
#: What the boundary package exports: the only names the rest of privdiff may use.
EXPORTS = {
    "DPRetriever",
    "PrivateRelease",
    "EmbeddingIndex",
    "IndexManifest",
    "add_scan_copy",  # writes the float16 scan copy next to an index; returns no rows
    "build_index",
    "build_index_from_images",
    "load_index",
    "read_manifest",
    "shared_source_rows",
    "check_public_disjoint",
    "domain_similarity",
    "mean_max_similarity",
    "validated_unit_rows",
    "TopKBackend",
    "ExactTopK",
    "IVFTopK",
    "IVFLayout",
    "ShardedIndex",
    "ShardedTopK",
    "RayShardedTopK",
    "shard_index",
    "is_sharded_index",
    "PublicCoarseQuantizer",
    "NoiseStrategy",
    "PaddingStrategy",
    "GaussianNoise",
    "ZeroPadding",
    "PadWithLastRecord",
    ESCAPE_HATCH,
}
#: Classes refused as bases even in a tree that has no boundary package yet (the original one).
CORE_CLASSES = {"DPRetriever", "EmbeddingIndex"}


def package_root() -> Path:
    env = os.environ.get("PRIVDIFF_BOUNDARY_ROOT")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "src" / "privdiff"


def _modules(root: Path) -> dict[str, ast.Module]:
    return {
        p.relative_to(root).as_posix(): ast.parse(p.read_text(encoding="utf-8"), str(p))
        for p in sorted(root.rglob("*.py"))
    }


def _inside(rel: str) -> bool:
    return rel.startswith(BOUNDARY + "/")


def _module_name(rel: str) -> str:
    parts = ["privdiff", *rel[: -len(".py")].split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(rel: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = _module_name(rel).split(".")
    if not rel.endswith("__init__.py"):
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _boundary_internals(modules: dict[str, ast.Module]) -> tuple[set[str], set[str], set[str]]:
    """(submodule names, underscore attribute names, class names) declared inside the boundary."""
    submodules, attrs, classes = set(), set(ALWAYS_INTERNAL), set(CORE_CLASSES)
    for rel, tree in modules.items():
        if not _inside(rel):
            continue
        name = rel[len(BOUNDARY) + 1 : -len(".py")]
        if name != "__init__":
            submodules.add(name.split("/")[0])
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
                if node.attr.startswith("_") and not node.attr.startswith("__") and isinstance(node.ctx, ast.Store):
                    attrs.add(node.attr)
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets
            ):
                if isinstance(node.value, (ast.Tuple, ast.List)):
                    attrs |= {
                        e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
                    }
    return submodules, attrs, classes


def _own_private_attrs(cls: ast.ClassDef) -> set[str]:
    return {
        n.attr
        for n in ast.walk(cls)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == "self"
        and isinstance(n.ctx, ast.Store)
        and n.attr.startswith("_")
    }


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def boundary_violations(root: Path | None = None) -> list[str]:
    """Every violation of rules (a)-(d) in the tree at ``root``, as ``path:line: message``."""
    root = package_root() if root is None else root
    modules = _modules(root)
    submodules, internal_attrs, boundary_classes = _boundary_internals(modules)
    out: list[str] = []
    for rel, tree in modules.items():
        if _inside(rel):
            continue

        def bad(node: ast.AST, message: str, rel: str = rel) -> None:
            out.append(f"{rel}:{getattr(node, 'lineno', 0)}: {message}")

        # (a) imports of the boundary's internals
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith(BOUNDARY_MODULE + "."):
                        bad(node, f"(a) imports boundary internal {alias.name}")
            elif isinstance(node, ast.ImportFrom):
                mod = _resolve(rel, node)
                if mod.startswith(BOUNDARY_MODULE + "."):
                    bad(node, f"(a) imports from boundary internal {mod}")
                elif mod == BOUNDARY_MODULE:
                    for alias in node.names:
                        if alias.name in submodules or alias.name.startswith("_"):
                            bad(
                                node,
                                f"(a) imports {alias.name} from {mod} (a submodule or private name)",
                            )
        # (b) underscore attributes of other objects; (d) subclasses of boundary classes
        own: dict[ast.AST, set[str]] = {}
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            mine = _own_private_attrs(cls)
            for node in ast.walk(cls):
                own.setdefault(node, set()).update(mine)
            for base in cls.bases:
                name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
                if name in boundary_classes:
                    bad(cls, f"(d) class {cls.name} subclasses boundary class {name}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or _is_dunder(node.attr):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            target = ast.unparse(node)
            if node.attr in internal_attrs:
                bad(node, f"(b) reads boundary-internal attribute {target}")
            elif node.attr not in own.get(node, set()):
                bad(node, f"(b) reads private attribute {target} of another object")
        # (c) the escape hatch
        if rel not in ESCAPE_HATCH_ALLOWED:
            for node in ast.walk(tree):
                named = (
                    (isinstance(node, ast.Name) and node.id == ESCAPE_HATCH)
                    or (isinstance(node, ast.Attribute) and node.attr == ESCAPE_HATCH)
                    or (isinstance(node, ast.alias) and node.name == ESCAPE_HATCH)
                )
                if named:
                    bad(node, f"(c) uses the escape hatch {ESCAPE_HATCH} outside the allow-list")
            # (e) noiseless backend results: only the mechanism (inside) and the allow-listed baselines
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in NOISELESS_METHODS
                ):
                    bad(node, f"(e) calls {ast.unparse(node.func)}, a noiseless aggregate of private rows")
    return sorted(set(out))


def _exports(root: Path) -> set[str] | None:
    init = root / BOUNDARY / "__init__.py"
    if not init.is_file():
        return None
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return {e.value for e in node.value.elts}
    return set()


def test_the_boundary_package_exists_and_exports_exactly_the_allowed_names():
    exports = _exports(package_root())
    assert exports is not None, f"no boundary package at {package_root() / BOUNDARY}"
    assert exports == EXPORTS


def test_no_code_outside_the_boundary_crosses_it():
    violations = boundary_violations()
    assert not violations, "privacy boundary crossed:\n" + "\n".join(violations)


# --- the checker itself can fail -------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "privdiff"
    for rel, text in {
        "retrieval/private/__init__.py": "",
        "retrieval/private/index.py": (
            "class EmbeddingIndex:\n    __slots__ = ('_vectors', '_manifest')\n"
            "def unsafe_nonprivate_rows(index, *, reason):\n    return index._vectors\n"
        ),
        **files,
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    "rel, source, rule",
    [
        ("evaluation/x.py", "from privdiff.retrieval.private.index import EmbeddingIndex\n", "(a)"),
        ("evaluation/x.py", "import privdiff.retrieval.private.index\n", "(a)"),
        ("evaluation/x.py", "from privdiff.retrieval.private import index\n", "(a)"),
        ("retrieval/public.py", "from .private.index import EmbeddingIndex\n", "(a)"),
        ("retrieval/public.py", "from .private import _helper\n", "(a)"),
        ("rdm/x.py", "def f(idx):\n    return idx._vectors\n", "(b)"),
        ("rdm/x.py", "def f(r):\n    return r._manifest\n", "(b)"),
        ("rdm/x.py", "def f(o):\n    return o._anything\n", "(b)"),
        (
            "rdm/x.py",
            "class A:\n    def __init__(self):\n        self._vectors = 1\n    def f(self, o):\n"
            "        return o._vectors\n",
            "(b)",
        ),
        ("rdm/x.py", "from privdiff.retrieval.private import unsafe_nonprivate_rows\n", "(c)"),
        (
            "rdm/x.py",
            "import privdiff.retrieval.private as p\nrows = p.unsafe_nonprivate_rows(i, reason='x')\n",
            "(c)",
        ),
        (
            "evaluation/audit.py",
            "from privdiff.retrieval import DPRetriever\nclass B(DPRetriever):\n    pass\n",
            "(d)",
        ),
        (
            "evaluation/audit.py",
            "import privdiff.retrieval.private as p\nclass B(p.EmbeddingIndex):\n    pass\n",
            "(d)",
        ),
        (
            "rdm/x.py",
            "from privdiff.retrieval import ExactTopK\nsums, n = ExactTopK(i).topk_sums(q, 20, 0.01, rng)\n",
            "(e)",
        ),
    ],
)
def test_each_rule_catches_its_violation(tmp_path, rel, source, rule):
    found = boundary_violations(_tree(tmp_path, {rel: source}))
    assert found and all(v.startswith(rel) and f": {rule} " in v for v in found), found


def test_what_the_rules_allow(tmp_path):
    ok = {
        "rdm/a.py": "from privdiff.retrieval.private import EmbeddingIndex, load_index\n"
        "from privdiff.retrieval import DPRetriever\n",
        "rdm/b.py": "class L:\n    def __init__(self):\n        self._conn = 1\n"
        "    @classmethod\n    def make(cls):\n        other = cls()\n        return other._conn\n",
        "evaluation/baselines.py": "from privdiff.retrieval.private import unsafe_nonprivate_rows\n"
        "rows = unsafe_nonprivate_rows(i, reason='baseline')\nsums, n = b.topk_sums(q, 20, 1.0, rng)\n",
        "retrieval/private/mechanism.py": "def f(index):\n    return index._vectors\n",
    }
    assert boundary_violations(_tree(tmp_path, ok)) == []
