"""The known-answer edit through the real csd-edit trainers: a whole 3D edit converges to what the prior asks
for, and does no harm when the target is the source (short versions of ``scripts/bench_convergence.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nerf_fixtures import _once, session_base, source_run, splat_source_run, synthetic_scene

from csd_nerf.testing.convergence import ConvergenceConfig, run_known_answer_edit
from csd_nerf.testing.synthetic import SyntheticSceneConfig, make_synthetic_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return session_base(tmp_path_factory)


@pytest.fixture(scope="module")
def target(base) -> Path:
    """The fixtures' scene with the edited layout: same cameras, same file names."""
    config = SyntheticSceneConfig(num_views=24, width=32, height=32, layout="edited")
    return _once(base / "target", lambda folder: make_synthetic_scene(folder, config))


def _toward_target(report: dict, views: str) -> float:
    """How much more the ``held_out`` or ``train`` views moved toward the target than toward the source (dB): an
    edit, not just more fitting of a source trained for a few steps only."""
    prefix = "psnr" if views == "held_out" else "psnr_train_views"
    to_target = report[f"{prefix}_after"] - report[f"{prefix}_before"]
    return to_target - (report[f"{prefix}_to_source_after"] - report[f"{prefix}_to_source_before"])


def _edit(base: Path, work: Path, target: Path, representation: str, steps: int) -> dict:
    source = source_run(base) if representation == "nerfacto" else splat_source_run(base)
    config = ConvergenceConfig(
        source_data=synthetic_scene(base),
        target_data=target,
        work_dir=work,
        representation=representation,
        steps=steps,
        num_particles=4,
        render_resolution=32,
        source_run=source,
    )
    report = run_known_answer_edit(config, log=lambda message: None)
    print(report)  # shown when an assertion fails
    return report


def test_nerfacto_edit_converges_toward_the_target(base, target, tmp_path):
    report = _edit(base, tmp_path, target, "nerfacto", steps=60)
    assert report["steps"] == 60
    assert report["psnr_gain"] >= 0.5, report  # 2 held-out views, never edited directly
    # The fixture's source is fitted for 60 steps only, so every view also gets closer to the source; the
    # training views (22 of them, against 2 held out) show the edit's direction beyond that.
    assert _toward_target(report, "train") >= 0.5, report
    assert report["psnr_train_views_after"] >= report["psnr_train_views_before"] + 1.5, report
    assert report["proposal_relative_change"] > 0.01 and report["field_relative_change"] > 0.01


def test_nerfacto_edit_toward_the_source_does_no_harm(base, tmp_path):
    report = _edit(base, tmp_path, synthetic_scene(base), "nerfacto", steps=30)
    assert report["psnr_after"] >= report["psnr_before"] - 0.5, report


def test_splat_edit_converges_toward_the_target(base, target, tmp_path):
    report = _edit(base, tmp_path, target, "splat", steps=60)
    assert report["psnr_gain"] >= 1.0 and _toward_target(report, "held_out") >= 1.0, report
    assert _toward_target(report, "train") >= 1.5, report
    assert report["psnr_train_views_after"] >= report["psnr_train_views_before"] + 1.5, report
    assert report["gaussians_after"] == report["gaussians_before"]  # densification off by default


def test_source_flags_and_held_out_fraction_reach_the_source_run(tmp_path, monkeypatch):
    """The bench's --source-flags and --held-out shape the ns-train command that trains the source."""
    import csd_nerf.testing.convergence as convergence

    seen: list[list[str]] = []

    class Stop(Exception):
        pass

    def fake_run(command, **kwargs):
        seen.append(command)
        raise Stop

    monkeypatch.setattr(convergence.subprocess, "run", fake_run)
    config = ConvergenceConfig(
        source_data=tmp_path / "source",
        target_data=tmp_path / "target",
        work_dir=tmp_path / "work",
        representation="splat",
        held_out_fraction=0.25,
        source_flags=["--pipeline.model.stop-split-at", "1"],
    )
    with pytest.raises(Stop):
        run_known_answer_edit(config, log=lambda message: None)
    command = seen[0]
    assert command[1] == "splatfacto-cpu"
    assert command[command.index("--pipeline.model.stop-split-at") + 1] == "1"
    assert command[command.index("--train-split-fraction") + 1] == "0.75"
