#!/usr/bin/env bash
# Render a privdiff HTML report (default: out/demo/report.html) in headless Chromium to a PNG, to
# see the page as a reader will. The page is captured in a tall window, the blank space below the
# content is trimmed, and the result is also cut into TILE-pixel-high pieces (…-01.png, …-02.png)
# because a 1280×8000 image is hard to look at in one go.
#
#   scripts/screenshot-report.sh [REPORT_HTML] [OUT_PNG] [WIDTH] [HEIGHT] [TILE]
#
# Needs chromium (Debian: apt-get install -y chromium) and Pillow (in the project's .venv).
set -euo pipefail

report=${1:-out/demo/report.html}
png=${2:-${report%.html}.png}
width=${3:-1280}
height=${4:-12000}
tile=${5:-1600}

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
    echo "error: no chromium found; install it with: apt-get install -y chromium" >&2
    exit 2
fi
if [[ ! -f "$report" ]]; then
    echo "error: $report does not exist (run: privdiff demo --out $(dirname "$report"))" >&2
    exit 2
fi
python=${PYTHON:-.venv/bin/python}
[[ -x "$python" ]] || python=python3

mkdir -p "$(dirname "$png")"
rm -f "$png"
# A throwaway profile: headless Chromium must not touch (or lock) a real one.
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: containers usually run as root, where Chromium refuses its sandbox.
if ! "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
    --window-size="${width},${height}" --virtual-time-budget=5000 \
    --screenshot="$(realpath -m "$png")" "file://$(realpath "$report")" >"$profile/log" 2>&1 \
    || [[ ! -s "$png" ]]; then
    echo "error: chromium did not write $png:" >&2
    tail -20 "$profile/log" >&2
    exit 1
fi

"$python" - "$png" "$tile" "$height" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

path, tile, height = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
img = Image.open(path).convert("RGB")
arr = np.asarray(img)
rows = np.flatnonzero((arr < 250).any(axis=(1, 2)))
bottom = int(rows[-1]) + 40 if rows.size else arr.shape[0]
if bottom >= height:
    print(f"warning: the page fills the whole {height}px window; pass a larger HEIGHT", file=sys.stderr)
img = img.crop((0, 0, img.width, min(bottom, img.height)))
img.save(path)
for old in path.parent.glob(f"{path.stem}-[0-9][0-9].png"):
    old.unlink()
n = 0
for n, top in enumerate(range(0, img.height, tile), start=1):
    img.crop((0, top, img.width, min(top + tile, img.height))).save(path.with_name(f"{path.stem}-{n:02d}.png"))
print(f"{path}: {img.width}×{img.height} px, {n} tile(s) {path.stem}-01.png …")
EOF
