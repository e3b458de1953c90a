"""Image helpers shared by every package: conversions and grids saved as PNG.

Images travel through privdiff as uint8 arrays (N, H, W, C). Models work in float tensors
(N, C, H, W) scaled to [-1, 1]. These two functions are the only conversions between the two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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
