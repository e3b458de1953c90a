"""Convert privdiff v1 checkpoints to the diffusers pipeline-folder layout, in place.

    python scripts/convert_checkpoints.py [DIR ...]     (default: the shipped checkpoints)

* an RDM (``config.json`` + ``model.safetensors``) becomes ``model_index.json`` (``DPRDMPipeline``,
  with ``rdm_config`` and the ``privdiff`` metadata) + ``unet/`` + ``scheduler/``;
* a pixel model (``model.json`` + ``unet/``) becomes a ``DDPMPipeline`` folder + ``privdiff.json``.

Each model is written to a sibling temporary folder first and sampled with a fixed seed before
and after; the old files are replaced only when the outputs are bit-identical (else the script
stops with the folder untouched). Other files (loss curves, the domain reference, the classifier
folder) stay where they are. A folder already in the new layout is left alone.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from privdiff.checkpoints import CPSAMPLE_MODEL, RDM_MODEL, package_checkpoints

SEED = 1234


def _rdm_sample(model) -> np.ndarray:
    from privdiff.diffusion import sample
    from privdiff.rdm.model import ClassifierFreeGuidance

    g = torch.Generator().manual_seed(SEED)
    cfg = model.config
    x_T = torch.randn((2, cfg.channels, cfg.sample_size, cfg.sample_size), generator=g)
    ctx = torch.randn((2, cfg.k, cfg.embedding_dim), generator=g)
    ctx = ctx / ctx.norm(dim=-1, keepdim=True)
    return sample(ClassifierFreeGuidance(model, ctx, 2.0), model.ddim_scheduler(), x_T, num_inference_steps=4).numpy()


def _pixel_sample(model) -> np.ndarray:
    from privdiff.diffusion import sample

    x_T = torch.randn((2, *model.image_shape), generator=torch.Generator().manual_seed(SEED))
    return sample(model.denoiser(), model.ddim_scheduler(), x_T, num_inference_steps=4).numpy()


def convert_rdm(directory: Path) -> bool:
    """Convert one RDM folder; False if it is already converted."""
    from privdiff.rdm.model import V1_VERSION, RDMModel, read_model_info

    info = read_model_info(directory)
    if info["format_version"] != V1_VERSION:
        return False
    old = RDMModel.from_pretrained(directory)
    extra = {k: v for k, v in info.items() if k not in ("format", "format_version", "model")}
    with tempfile.TemporaryDirectory(dir=directory.parent) as tmp:
        old.save_pretrained(tmp, extra=extra)
        new = RDMModel.from_pretrained(tmp)
        if not np.array_equal(_rdm_sample(old), _rdm_sample(new)):
            raise SystemExit(f"{directory}: the converted RDM samples differently; nothing changed")
        _swap(Path(tmp), directory, old_files=("config.json", "model.safetensors"))
    return True


def convert_pixel(directory: Path) -> bool:
    """Convert one pixel diffusion model folder; False if it is already converted."""
    from privdiff.diffusion.model import MODEL_JSON, detect_format, load_model, save_model

    if detect_format(directory) != "privdiff-v1":
        return False
    old = load_model(directory)
    with tempfile.TemporaryDirectory(dir=directory.parent) as tmp:
        save_model(tmp, old.unet, schedule=old.schedule, meta=old.meta)
        new = load_model(tmp)
        if not np.array_equal(_pixel_sample(old), _pixel_sample(new)):
            raise SystemExit(f"{directory}: the converted model samples differently; nothing changed")
        shutil.rmtree(directory / "unet")
        _swap(Path(tmp), directory, old_files=(MODEL_JSON,))
    return True


def _swap(new: Path, directory: Path, *, old_files: tuple[str, ...]) -> None:
    """Move every entry of ``new`` into ``directory`` (replacing), then delete ``old_files``."""
    for entry in new.iterdir():
        target = directory / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        shutil.move(str(entry), str(target))
    for name in old_files:
        (directory / name).unlink(missing_ok=True)


def convert(directory: Path) -> str:
    """Convert whatever privdiff model ``directory`` holds; returns what was done."""
    if (directory / "config.json").is_file() and (directory / "model.safetensors").is_file():
        return "converted RDM" if convert_rdm(directory) else "already converted"
    if (directory / "model.json").is_file():
        return "converted pixel model" if convert_pixel(directory) else "already converted"
    return "already converted"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=Path, help="model folders (default: the shipped checkpoints)")
    args = parser.parse_args(argv)
    dirs = args.dirs
    if not dirs:
        root = package_checkpoints()
        if root is None:
            print("no package checkpoints found", file=sys.stderr)
            return 1
        dirs = [root / RDM_MODEL.name, root / CPSAMPLE_MODEL.name]
    for d in dirs:
        print(f"{d}: {convert(Path(d))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
