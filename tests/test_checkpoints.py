"""The one checkpoint resolver: explicit path > environment variable > package data > privdiff home,
and a typed error that names every place it looked."""

from __future__ import annotations

from pathlib import Path

import pytest

from privdiff import checkpoints
from privdiff.checkpoints import (
    CPSAMPLE_MODEL,
    RDM_MODEL,
    CheckpointNotFound,
    home_dir,
    package_checkpoints,
    resolve_checkpoint,
)
from privdiff.errors import CheckpointError


def _fake(root: Path, ckpt=RDM_MODEL) -> Path:
    d = root / ckpt.name
    d.mkdir(parents=True)
    (d / ckpt.marker).write_text("{}")
    return d


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in (
        RDM_MODEL.env_var,
        CPSAMPLE_MODEL.env_var,
        checkpoints.HOME_ENV_VAR,
        "XDG_DATA_HOME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "userhome"))
    return monkeypatch


@pytest.mark.integration
def test_shipped_checkpoints_are_package_data(clean_env):
    pkg = package_checkpoints()
    # Inside the installed package, not beside the source tree.
    assert pkg is not None and pkg.parts[-3:] == ("privdiff", "assets", "checkpoints")
    assert resolve_checkpoint(RDM_MODEL) == pkg / "rdm" / "fashion-mnist"
    assert resolve_checkpoint(CPSAMPLE_MODEL) == pkg / "cpsample" / "fmnist64"
    assert (resolve_checkpoint(CPSAMPLE_MODEL) / "classifier" / "classifier.json").is_file()


def test_order_explicit_then_env_then_package_then_home(clean_env, tmp_path):
    explicit, env, home = _fake(tmp_path / "x"), _fake(tmp_path / "e"), tmp_path / "h"
    _fake(home / "checkpoints")
    clean_env.setenv(checkpoints.HOME_ENV_VAR, str(home))
    clean_env.setenv(RDM_MODEL.env_var, str(env))
    assert resolve_checkpoint(RDM_MODEL, explicit) == explicit
    assert resolve_checkpoint(RDM_MODEL) == env
    clean_env.delenv(RDM_MODEL.env_var)
    assert resolve_checkpoint(RDM_MODEL) == package_checkpoints() / RDM_MODEL.name  # package beats home
    clean_env.setattr(checkpoints, "package_checkpoints", lambda: None)  # e.g. an install without the data
    assert resolve_checkpoint(RDM_MODEL) == home / "checkpoints" / RDM_MODEL.name


def test_home_defaults_to_xdg_data_home_then_local_share(clean_env, tmp_path):
    assert home_dir() == tmp_path / "userhome" / ".local" / "share" / "privdiff"
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert home_dir() == tmp_path / "xdg" / "privdiff"
    clean_env.setenv(checkpoints.HOME_ENV_VAR, str(tmp_path / "ph"))
    assert home_dir() == tmp_path / "ph"


def test_an_explicit_path_or_variable_without_the_model_is_an_error_not_a_fallback(clean_env, tmp_path):
    with pytest.raises(CheckpointNotFound) as exc:
        resolve_checkpoint(RDM_MODEL, tmp_path / "nowhere")
    assert exc.value.looked_in == [tmp_path / "nowhere"] and str(tmp_path / "nowhere") in str(exc.value)
    clean_env.setenv(CPSAMPLE_MODEL.env_var, str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"\$PRIVDIFF_CPSAMPLE_MODEL: .*empty"):
        resolve_checkpoint(CPSAMPLE_MODEL)


def test_a_missing_checkpoint_names_every_place_it_looked(clean_env, tmp_path):
    clean_env.setattr(checkpoints, "package_checkpoints", lambda: tmp_path / "pkg")
    clean_env.setenv(checkpoints.HOME_ENV_VAR, str(tmp_path / "home"))
    with pytest.raises(CheckpointNotFound) as exc:
        resolve_checkpoint(CPSAMPLE_MODEL)
    err = exc.value
    assert isinstance(err, CheckpointError) and err.checkpoint is CPSAMPLE_MODEL
    assert err.looked_in == [
        tmp_path / "pkg" / "cpsample/fmnist64",
        tmp_path / "home" / "checkpoints/cpsample/fmnist64",
    ]
    for where in err.looked_in:
        assert str(where) in str(err)
    assert "PRIVDIFF_CPSAMPLE_MODEL" in str(err) and "privdiff train diffusion" in str(err)


def test_no_source_file_finds_data_by_climbing_parents():
    # The resolver replaced every `Path(__file__).parents[N]`: a wheel has no repository above it.
    src = Path(checkpoints.__file__).parent
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py") if "parents[" in p.read_text()]
    assert offenders == []
