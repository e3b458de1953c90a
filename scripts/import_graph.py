"""Package-level import graph of privdiff: packages, edges and edges that point *up* the layers.

Counts every import (module top and lazy ones inside functions) between privdiff's packages.
Layers, lowest first, are the intended direction of dependencies (docs/architecture.md); an
"upward" edge goes from a lower layer to a higher one. Run on any checkout:

    python scripts/import_graph.py [SRC_ROOT]      # default: src/privdiff of this checkout
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

LAYERS: dict[str, int] = {
    "errors": 0,
    "utils": 0,
    "data": 1,
    "accounting": 1,
    "checkpoints": 1,
    "report": 1,  # rendering: image conversion, grids, output folders, HTML (no method code)
    "encoders": 2,
    "retrieval.private": 2,  # the privacy boundary; peers with public retrieval
    "retrieval": 2,
    "diffusion": 3,
    "rdm": 4,
    "cpsample": 4,
    "decoders": 4,  # DP-RDM on unCLIP-class decoders (Kandinsky 2.2, Stable unCLIP, IP-Adapter)
    "evaluation": 5,
    "demo": 6,  # the application (and its report)
    "service": 6,  # `privdiff serve`: an application over make_pipeline and the ledger
    "cli": 7,
}


def package_of(module: str) -> str | None:
    """privdiff.retrieval.private.index → retrieval.private; privdiff.rdm.model → rdm."""
    parts = module.split(".")
    if parts[0] != "privdiff" or len(parts) < 2:
        return None
    if parts[1] == "retrieval" and len(parts) > 2 and parts[2] == "private":
        return "retrieval.private"
    return parts[1] if parts[1] in LAYERS else None


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def edges(root: Path) -> Counter:
    out: Counter = Counter()
    for path in sorted(root.rglob("*.py")):
        src = package_of(module_name(root, path))
        if src is None:
            continue
        is_pkg = path.name == "__init__.py"
        here = module_name(root, path).split(".")
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here if is_pkg else here[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            dsts = {package_of(t) for t in targets} - {None, src}
            # "from privdiff.retrieval import private" names the subpackage, not retrieval itself.
            if "retrieval.private" in dsts and "retrieval" in dsts and isinstance(node, ast.ImportFrom):
                if (node.module or "").endswith("retrieval") and all(a.name == "private" for a in node.names):
                    dsts.discard("retrieval")
            for dst in dsts:
                out[(src, dst)] += 1
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "src" / "privdiff"
    e = edges(root)
    packages = sorted({p for pair in e for p in pair}, key=lambda p: (LAYERS[p], p))
    upward = sorted(((a, b), n) for (a, b), n in e.items() if LAYERS[a] < LAYERS[b])
    print(f"{len(packages)} packages, {len(e)} package edges ({sum(e.values())} imports), {len(upward)} upward")
    for (a, b), n in upward:
        print(f"  upward: {a} (layer {LAYERS[a]}) -> {b} (layer {LAYERS[b]}): {n} import(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
