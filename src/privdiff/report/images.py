"""Image helpers shared by every package: conversions and grids saved as PNG.

Images travel through privdiff as uint8 arrays (N, H, W, C). Models work in float tensors
(N, C, H, W) scaled to [-1, 1]. These two functions are the only conversions between the two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Lazy imports: torch and PIL are imported inside the functions that use them, for start-up time
# (the CLI imports privdiff.report).


def to_model_space(images: np.ndarray):
    """uint8 (N, H, W, C) → float32 torch tensor (N, C, H, W) in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
    return x.permute(0, 3, 1, 2).contiguous()


def to_uint8(x) -> np.ndarray:
    """float tensor/array (N, C, H, W) in [-1, 1] → uint8 (N, H, W, C), clipped."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    arr = np.clip((arr + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.transpose(arr, (0, 2, 3, 1))


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 images (N, H, W, C) into one (H', W', C) array, row-major."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    if n == 0:
        return np.full((h + 2 * pad, w + 2 * pad, c), pad_value, dtype=np.uint8)
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Save one uint8 (H, W, C) image; ``scale`` > 1 enlarges with nearest neighbour (small data)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)
    return path


def save_grid(images: np.ndarray, path: str | Path, ncols: int | None = None, scale: int = 1, pad: int = 2) -> Path:
    """Tile and save uint8 images (N, H, W, C) as one PNG."""
    return save_png(make_grid(images, ncols=ncols, pad=pad), path, scale=scale)


#: Largest labelled grid: rows and images per row shown (the rest are only in the image files).
GRID_MAX_ROWS = 64
GRID_MAX_COLS = 16


def make_labelled_grid(
    rows: list[np.ndarray],
    labels: list[str],
    *,
    title: str | None = None,
    scale: int = 1,
    pad: int = 2,
    label_width: int | None = None,
) -> np.ndarray:
    """Tile one row of uint8 images (n_i, H, W, C) per entry of ``rows``, each with a text label
    on its left and an optional ``title`` line on top; returns an RGB uint8 (H', W', 3) array.

    The tiles are enlarged by ``scale`` (nearest neighbour) *before* the text is drawn, so the
    label stays legible on 28-px images. PIL's built-in bitmap font is used: no font file is
    needed. Use :func:`make_grid` / :func:`save_grid` when a caller needs the bare tiles.
    """
    from PIL import Image, ImageDraw, ImageFont

    if len(rows) != len(labels) or not rows:
        raise ValueError(f"need one label per row (got {len(rows)} rows, {len(labels)} labels)")
    # An overview, not an archive: cap its size so a large request cannot fail here, after the
    # (possibly charged) images exist. Every image is saved separately anyway.
    shown = f" (showing {min(len(rows), GRID_MAX_ROWS)} of {len(rows)} rows, ≤ {GRID_MAX_COLS} per row)"
    if len(rows) > GRID_MAX_ROWS or any(len(r) > GRID_MAX_COLS for r in rows):
        title = (title or "") + shown
    rows = [np.asarray(r)[:GRID_MAX_COLS] for r in rows[:GRID_MAX_ROWS]]
    labels = labels[:GRID_MAX_ROWS]
    font = ImageFont.load_default()
    tiles = []
    for r in rows:
        g = make_grid(np.asarray(r), ncols=len(r), pad=pad)
        if g.shape[2] == 1:
            g = np.repeat(g, 3, axis=2)
        img = Image.fromarray(g[..., :3])
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        tiles.append(img)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    # Long prompts are cut so one label never dwarfs the images (the full text is in the JSON).
    labels = [lab if len(lab) <= 48 else lab[:47] + "…" for lab in labels]
    width_needed = max(text_size(lab)[0] for lab in labels) + 8
    label_w = label_width if label_width is not None else width_needed
    line_h = max(text_size("Ag")[1] + 6, 12)
    title_h = line_h if title else 0
    grid_w = label_w + max(t.width for t in tiles)
    if title:
        grid_w = max(grid_w, text_size(title)[0] + 8)
    grid_h = title_h + sum(t.height for t in tiles)
    canvas = Image.new("RGB", (grid_w, grid_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 3), title, fill=(0, 0, 0), font=font)
    y = title_h
    for tile, lab in zip(tiles, labels):
        canvas.paste(tile, (label_w, y))
        draw.text((4, y + max(0, (tile.height - text_size(lab)[1]) // 2)), lab, fill=(0, 0, 0), font=font)
        y += tile.height
    return np.asarray(canvas)


def save_labelled_grid(
    rows: list[np.ndarray],
    labels: list[str],
    path: str | Path,
    *,
    title: str | None = None,
    scale: int = 1,
) -> Path:
    """:func:`make_labelled_grid` saved as one PNG (already scaled)."""
    return save_png(make_labelled_grid(rows, labels, title=title, scale=scale), path)
