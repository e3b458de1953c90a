"""Item 4: the checkpoints travel with the package. A wheel built from this tree, installed into a
fresh virtual environment, resolves the shipped checkpoints from its own package data (not this
checkout) and runs the quick demo.

The venv is created with ``--system-site-packages`` and, after the wheel is installed, a ``.pth``
line naming the running interpreter's site-packages, so torch & co. are reused rather than
reinstalled; a path line in a ``.pth`` does not run that directory's own ``.pth`` files, so the
checkout's editable install does not come along. Everything runs from a temporary cwd with
``PYTHONPATH`` unset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PRIVDIFF_RDM_MODEL", "PRIVDIFF_CPSAMPLE_MODEL")
    }
    return env | extra


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, wheel path) with the wheel built from a copy of this tree."""
    base = tmp_path_factory.mktemp("wheel")
    tree = base / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, tree / name)
    # A copy, so the build's egg-info/build folders never land in the checkout.
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(tree)],
        check=True,
        cwd=base,
        env=_clean_env(),
    )
    (wheel,) = dist.glob("privdiff-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        env=_clean_env(),
    )
    # After the install (else pip would see the checkout's privdiff as already installed).
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "_outer_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, wheel, Path(purelib)


def test_the_wheel_ships_the_converted_checkpoints(installed):
    _, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "privdiff/assets/checkpoints/rdm/fashion-mnist/model_index.json",
        "privdiff/assets/checkpoints/rdm/fashion-mnist/unet/diffusion_pytorch_model.safetensors",
        "privdiff/assets/checkpoints/rdm/fashion-mnist/scheduler/scheduler_config.json",
        "privdiff/assets/checkpoints/cpsample/fmnist64/model_index.json",
        "privdiff/assets/checkpoints/cpsample/fmnist64/unet/diffusion_pytorch_model.safetensors",
        "privdiff/assets/checkpoints/cpsample/fmnist64/classifier/classifier.json",
    ):
        assert path in names


def test_installed_wheel_imports_and_resolves_checkpoints_from_its_own_package_data(installed, tmp_path):
    python, _, purelib = installed
    code = (
        "import privdiff; from privdiff.checkpoints import RDM_MODEL, CPSAMPLE_MODEL, resolve_checkpoint; "
        "from privdiff.rdm.model import RDMModel; from privdiff.diffusion import load_model; "
        "r = resolve_checkpoint(RDM_MODEL); c = resolve_checkpoint(CPSAMPLE_MODEL); "
        "RDMModel.from_pretrained(r); load_model(c); print(privdiff.__file__); print(r); print(c)"
    )
    home = tmp_path / "home"
    out = subprocess.run(
        [str(python), "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(HOME=str(home), PRIVDIFF_HOME=str(home / "privdiff")),
    ).stdout.split()
    assert all(Path(p).is_relative_to(purelib) for p in out), out
    assert not any(str(ROOT) in p for p in out)


@pytest.mark.slow
def test_installed_wheel_runs_the_quick_demo(installed, tmp_path):
    from privdiff.data import load_dataset

    try:
        load_dataset("fashion-mnist:train[:2]")
    except Exception:  # noqa: BLE001
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    python, _, _ = installed
    privdiff = python.parent / "privdiff"
    proc = subprocess.run(
        [str(privdiff), "demo", "--quick", "--out", str(tmp_path / "demo"), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(HOME=str(tmp_path / "home")),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "demo" / "report.html").is_file() and (tmp_path / "demo" / "summary.json").is_file()
