"""scripts/ablate.py: the grid, the per-cell schedule, and a small end-to-end run with the tiny models."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

_SPEC = importlib.util.spec_from_file_location("ablate", Path(__file__).resolve().parents[1] / "scripts" / "ablate.py")
ablate = importlib.util.module_from_spec(_SPEC)
sys.modules["ablate"] = ablate  # dataclasses look their module up while the script is being executed
_SPEC.loader.exec_module(ablate)


def test_grid_runs_each_distinct_configuration_once():
    cells = ablate.build_grid([1, 2, 4, 8], [True, False], ["image", "noise"], [0.5, 1.0, 2.0], num_frames=8)
    names = [c.name for c in cells]
    assert len(names) == len(set(names)) == 2 + 3 * (2 * 3 + 2)  # N=1: baselines only; else 3 bw + no-svgd, x2
    assert "N1-image" in names and "N1-svgd-bw1-image" not in names
    assert "N4-nosvgd-noise" in names and "N4-nosvgd-bw1-noise" not in names
    assert "N8-svgd-bw0.5-image" in names
    clamped = ablate.build_grid([4, 8], [True], ["image"], [1.0], num_frames=3)
    assert [c.name for c in clamped] == ["N3-svgd-bw1-image"]


def test_schedule_gives_every_frame_the_same_updates():
    args = argparse.Namespace(steps=0, updates_per_frame=10, lr_decay_every=20)
    one = ablate.Cell(1, None, "image", None)
    four = ablate.Cell(4, True, "image", 1.0)
    assert ablate.cell_schedule(one, 8, args) == (80, 160)
    assert ablate.cell_schedule(four, 8, args) == (20, 40)
    assert ablate.cell_schedule(ablate.Cell(3, True, "image", 1.0), 8, args) == (27, 53)  # rounded up: >= 10 each
    args.steps = 7
    assert ablate.cell_schedule(one, 8, args) == (7, 20)


def test_tiny_ablation_end_to_end(tmp_path):
    out = tmp_path / "abl"
    argv = ["--tiny", "--output", str(out), "--num-particles", "1", "2", "--coupling", "on", "off"]
    argv += ["--baseline", "image", "--bandwidth", "0.5", "2", "--seeds", "0", "1", "--updates-per-frame", "1"]
    assert ablate.main([*argv, "--no-lpips", "--quiet", "--save-media"]) == 0

    doc = json.loads((out / "ablation.json").read_text())
    assert doc["header"]["meaningless"] is True and len(doc["header"]["warnings"]) == 2
    expected = ["N1-image", "N2-svgd-bw0.5-image", "N2-svgd-bw2-image", "N2-nosvgd-image"]
    assert [r["cell"] for r in doc["rows"]] == expected
    assert len(doc["runs"]) == 8
    steps = {r["cell"]: r["steps"] for r in doc["rows"]}
    assert steps == {"N1-image": 8, "N2-svgd-bw0.5-image": 4, "N2-svgd-bw2-image": 4, "N2-nosvgd-image": 4}
    for run in doc["runs"]:
        assert run["unet_samples"] == 5 * run["config"]["num_particles"] * run["steps"]  # 5 UNet evaluations each
        assert len(run["per_frame"]["clip_directional_similarity"]) == 8
        assert run["timings"]["step_s"] > 0
    # the flags reach the editor: coupling and bandwidth change the result for the same seed
    by = {(r["cell"], r["seed"]): r["per_frame"]["clip_directional_similarity"] for r in doc["runs"]}
    assert by[("N2-svgd-bw0.5-image", 0)] != by[("N2-nosvgd-image", 0)]
    assert by[("N2-svgd-bw0.5-image", 0)] != by[("N2-svgd-bw2-image", 0)]
    assert by[("N1-image", 0)] != by[("N1-image", 1)]

    with (out / "ablation.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["cell"] for r in rows] == expected
    assert {"clip_directional_similarity", "clip_directional_similarity_std", "step_s", "lpips"} <= set(rows[0])
    assert rows[0]["lpips"] == ""  # unavailable, not made up
    md = (out / "ablation.md").read_text()
    assert "MEANINGLESS" in md and md.count("\n| N") == 4 and " ± " in md
    with Image.open(out / "runs" / "N2-nosvgd-image-seed1" / "comparison.png") as comparison:
        comparison.load()  # decodes: a whole picture, not just a file
        assert comparison.width > 64
    frames = sorted((out / "input_frames").glob("*.png"))
    assert len(frames) == 8 and all(Image.open(f).size == (64, 64) for f in frames)


def test_existing_output_is_refused_with_one_line(tmp_path, capsys):
    out = tmp_path / "abl"
    out.mkdir()
    (out / "ablation.json").write_text("{}")
    assert ablate.main(["--tiny", "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ablate: error:") and "--overwrite" in err and "\n" not in err


def test_empty_caption_is_refused(tmp_path, capsys):
    assert ablate.main(["--tiny", "--output", str(tmp_path / "x"), "--source-caption", "", "--quiet"]) == 2
    assert "caption is empty" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--num-particles", "0"], ["--bandwidth", "-1"], ["--updates-per-frame", "0"]])
def test_bad_grid_values_are_refused(tmp_path, capsys, bad):
    assert ablate.main(["--tiny", "--output", str(tmp_path / "x"), "--quiet", *bad]) == 2
    assert capsys.readouterr().err.startswith("ablate: error:")
