import json

import numpy as np
import pytest
from PIL import Image

from privdiff.cli import main


def test_data_show_writes_grid_and_prints_counts(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["data", "show", "digits[:20]", "--n", "8", "--out", str(out), "--scale", "2"]) == 0
    text = capsys.readouterr().out
    assert "N=20" in text and "(20, 8, 8, 1)" in text
    grid = np.asarray(Image.open(out))
    assert grid.shape[0] > 8 * 2 and grid.shape[1] > 8 * 2


@pytest.mark.integration
def test_data_show_json_summary(tmp_path, capsys):
    out = tmp_path / "g.png"
    assert main(["data", "show", "lfw", "--n", "4", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 200 and summary["classes"] == {"face": 100, "non-face": 100}
    assert summary["grid_images"] == 4 and out.exists()


def test_data_show_bad_spec_exits_2(tmp_path, capsys):
    assert main(["data", "show", "cifar10", "--out", str(tmp_path / "x.png")]) == 2
    assert "invalid dataset spec" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert main(["data", "show", "digits", "--n", "0", "--out", str(tmp_path / "x.png")]) == 2


def test_data_show_folder_with_skip_corrupt_reports_the_count(tmp_path, capsys):
    folder = tmp_path / "imgs" / "cats"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((6, 6), dtype=np.uint8)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"broken")
    out = tmp_path / "g.png"
    assert main(["data", "show", f"folder:{tmp_path / 'imgs'}", "--out", str(out)]) == 2
    assert "b.png" in capsys.readouterr().err
    assert main(["data", "show", f"folder:{tmp_path / 'imgs'}", "--out", str(out), "--skip-corrupt"]) == 0
    text = capsys.readouterr().out
    assert "N=1" in text and "skipped unreadable files: 1" in text and "cats" in text
