"""Install a trained RDM snapshot as privdiff's shipped model, in one reproducible step.

    python scripts/install_rdm_checkpoint.py SRC_DIR [--dest DIR] [--loss-curve FILE] [--note TEXT]

``SRC_DIR`` is a model folder written by ``privdiff train rdm`` (either layout: v1 ``config.json`` +
``model.safetensors``, or the diffusers pipeline folder); it is only read. In a staging folder next
to ``--dest`` (default: the package's ``assets/checkpoints/rdm/fashion-mnist``) the script

1. copies the model files (not the resumable training state);
2. converts them to the pipeline layout (``scripts/convert_checkpoints.py``: samples before and
   after must be bit-identical);
3. writes ``domain_reference.npz`` in the model's own space, from the public set it was trained
   on (the step ``privdiff train rdm`` ends with);
4. writes ``training/loss.json|png``: the run's loss curve cut at the snapshot's step, checked
   against the loss the snapshot recorded (a curve of another run is refused);
5. sets the metadata: the generation defaults (:data:`privdiff.rdm.pipeline.DEFAULT_GENERATION`),
   the training command with ``--out`` as shipped, where the snapshot came from;

then checks the staged model loads and samples like ``SRC_DIR`` and replaces ``--dest`` with it.
Nothing in ``--dest`` changes if any step fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / "src" / "privdiff" / "assets" / "checkpoints" / "rdm" / "fashion-mnist"
#: Model files of each layout (everything else in a training folder is left behind).
V1_FILES = ("config.json", "model.safetensors")
V2_ENTRIES = ("model_index.json", "unet", "scheduler")
#: The loss curve's JSON rounds each step to 6 decimals, so its last-100 mean may differ from the
#: snapshot's unrounded ``final_loss_ema100`` by at most 5e-7; 1e-5 still tells runs apart.
LOSS_TOLERANCE = 1e-5


def _converter():
    # scripts/ is not a package: load the sibling converter by path.
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoints", Path(__file__).with_name("convert_checkpoints.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_model_files(src: Path, stage: Path) -> None:
    names = V1_FILES if all((src / n).is_file() for n in V1_FILES) else V2_ENTRIES
    stage.mkdir(parents=True)
    for name in names:
        # copyfile, not copy2: the installed files get the usual umask modes, whatever the
        # training run's (a 0600 weights file would be unreadable to other users of the package).
        if (src / name).is_dir():
            shutil.copytree(src / name, stage / name, copy_function=shutil.copyfile)
        else:
            shutil.copyfile(src / name, stage / name)


def shipped_command(command: str, out: str) -> str:
    """``command`` with the value of its ``--out`` option replaced by ``out``."""
    argv = shlex.split(command)
    if "--out" not in argv or argv.index("--out") + 1 >= len(argv):
        raise SystemExit(f"the recorded training command has no --out value: {command!r}")
    argv[argv.index("--out") + 1] = out
    return shlex.join(argv)


def _out_as_shipped(dest: Path) -> str:
    try:
        return str(dest.resolve().relative_to(ROOT))
    except ValueError:
        return str(dest.resolve())


def cut_loss_curve(losses: list[float], training: dict[str, Any]) -> list[float]:
    """The first ``steps_done`` losses, checked against the snapshot's recorded last-100 mean."""
    steps = int(training["steps_done"])
    if len(losses) < steps:
        raise SystemExit(f"the loss curve has {len(losses)} steps, the snapshot {steps}: not this run's curve")
    cut = [float(v) for v in losses[:steps]]
    recorded = training.get("final_loss_ema100")
    if recorded is not None:
        tail = cut[-100:]
        mean = sum(tail) / len(tail)
        if abs(mean - float(recorded)) > LOSS_TOLERANCE:
            raise SystemExit(
                f"the loss curve's mean over steps {steps - len(tail) + 1}..{steps} is {mean:.6f}, the snapshot "
                f"recorded {float(recorded):.6f}: not this run's curve"
            )
    return cut


def install(
    src: str | Path,
    dest: str | Path = DEFAULT_DEST,
    *,
    loss_curve: str | Path | None = None,
    note: str | None = None,
    image_encoder: Any = None,
    public_data: str | None = None,
) -> Path:
    """Install the RDM in ``src`` at ``dest`` (see the module docstring); returns ``dest``.

    ``image_encoder`` (default: ``load_image_encoder`` of the model's space) and ``public_data``
    (default: the spec the model records under ``data``) give the domain reference.
    """
    from privdiff.data import load_dataset
    from privdiff.encoders import load_image_encoder
    from privdiff.rdm.model import MODEL_INDEX, RDMModel, read_model_info
    from privdiff.rdm.pipeline import DEFAULT_GENERATION, DOMAIN_REFERENCE_FILE, write_domain_reference
    from privdiff.rdm.train import cached_embeddings, write_loss_curve
    from privdiff.utils.atomic import atomic_write_json

    src, dest = Path(src).resolve(), Path(dest).resolve()
    if src == dest:
        raise SystemExit("SRC_DIR and --dest are the same folder")
    info = read_model_info(src)
    training = info.get("training") or {}
    if "steps_done" not in training or "command" not in info:
        raise SystemExit(f"{src} records no training steps or command: not a `privdiff train rdm` model")
    loss_curve = Path(loss_curve) if loss_curve is not None else src / "training" / "loss.json"
    if not loss_curve.is_file():
        raise SystemExit(f"no loss curve at {loss_curve} (give the run's training/loss.json with --loss-curve)")
    losses = cut_loss_curve(json.loads(loss_curve.read_text())["loss"], training)
    space_id = info["model"]["space_id"]
    public_data = public_data or info.get("data")
    if not public_data:
        raise SystemExit(f"{src} records no public data spec; give --public-data")
    encoder = image_encoder if image_encoder is not None else load_image_encoder(space_id)
    if encoder.space_id != space_id:
        raise SystemExit(f"the image encoder is in {encoder.space_id!r}, the model in {space_id!r}")
    original = RDMModel.from_pretrained(src)
    convert = _converter()

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".install-", dir=dest.parent) as tmp:
        stage = Path(tmp) / "model"
        _copy_model_files(src, stage)
        print(f"{stage.name}: {convert.convert(stage)}")

        emb = cached_embeddings(load_dataset(public_data), encoder, private=False)
        write_domain_reference(stage, emb, encoder.space_id)
        write_loss_curve(losses, stage / "training", title=f"RDM adapt training ({len(losses)} steps)")

        index = json.loads((stage / MODEL_INDEX).read_text())
        meta = index["privdiff"]
        meta["command"] = shipped_command(info["command"], _out_as_shipped(dest))
        meta["generation_defaults"] = dict(DEFAULT_GENERATION)
        meta["installed_from"] = {"path": str(src), "steps_done": int(training["steps_done"])}
        if note:
            meta["installed_from"]["note"] = note
        atomic_write_json(stage / MODEL_INDEX, index)

        # The staged folder must be what it claims before it replaces anything.
        staged = RDMModel.from_pretrained(stage, space_id=space_id)
        if not np.array_equal(convert._rdm_sample(staged), convert._rdm_sample(original)):
            raise SystemExit("the staged model samples differently from SRC_DIR; nothing installed")
        with np.load(stage / DOMAIN_REFERENCE_FILE, allow_pickle=False) as z:
            if str(z["space_id"]) != space_id or z["reference"].shape[1] != original.embedding_dim:
                raise SystemExit("the domain reference is not in the model's space; nothing installed")

        # Package data is read by every user of an installation: world-readable, whatever modes
        # the training run or the writers (safetensors writes 0600) used.
        for path in (stage, *stage.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if dest.exists():
            dest.rename(Path(tmp) / "previous")  # removed with the staging folder
        stage.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="trained RDM folder (v1 or pipeline layout); only read")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"where to install (default: {DEFAULT_DEST})")
    parser.add_argument(
        "--loss-curve", type=Path, default=None, help="the run's training/loss.json (default: SRC_DIR/training/)"
    )
    parser.add_argument("--public-data", default=None, help="public set spec (default: the model's recorded data)")
    parser.add_argument("--note", default=None, help="provenance note stored with installed_from")
    args = parser.parse_args(argv)
    dest = install(args.src, args.dest, loss_curve=args.loss_curve, note=args.note, public_data=args.public_data)
    from privdiff.rdm.model import read_model_info

    info = read_model_info(dest)
    print(
        f"installed {args.src} -> {dest}: space {info['model']['space_id']}, "
        f"{info['training']['steps_done']} steps, command: {info['command']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
