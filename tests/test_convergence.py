"""The known-answer edit through the real csd-edit trainers: a whole 3D edit converges to what the prior asks
for, and does no harm when the target is the source (short versions of ``scripts/bench_convergence.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from nerf_fixtures import _once, convergence_source_run, splat_source_run, synthetic_scene

from csd_nerf.testing.convergence import ConvergenceConfig, run_known_answer_edit
from csd_nerf.testing.synthetic import LOCAL_REGION, SyntheticSceneConfig, make_synthetic_scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _edit(base: Path, work: Path, target: Path, representation: str, steps: int, **options) -> dict:
    source = convergence_source_run(base) if representation == "nerfacto" else splat_source_run(base)
    config = ConvergenceConfig(
        source_data=synthetic_scene(base),
        target_data=target,
        work_dir=work,
        representation=representation,
        steps=steps,
        num_particles=4,
        render_resolution=32,
        source_run=source,
        **options,
    )
    report = run_known_answer_edit(config, log=lambda message: None)
    print(report)  # shown when an assertion fails
    return report


EDIT_STEPS = 60
REGION = (*LOCAL_REGION[0], *LOCAL_REGION[1])


@pytest.fixture(scope="module")
def local(base) -> Path:
    """The local target: the fixtures' scene with only the box changed as in the target."""
    config = SyntheticSceneConfig(num_views=24, width=32, height=32, layout="local")
    return _once(base / "local", lambda folder: make_synthetic_scene(folder, config))


@pytest.fixture(scope="module")
def nerfacto_edit(base, target, local, tmp_path_factory) -> dict:
    return _edit(base, tmp_path_factory.mktemp("edit"), target, "nerfacto", EDIT_STEPS, local_target_data=local)


@pytest.fixture(scope="module")
def nerfacto_local(base, target, local, tmp_path_factory) -> dict:
    """The same edit toward the full target, inside the region around the box only."""
    work = tmp_path_factory.mktemp("local")
    return _edit(base, work, target, "nerfacto", EDIT_STEPS, region=REGION, local_target_data=local)


@pytest.fixture(scope="module")
def nerfacto_control(base, target, tmp_path_factory) -> dict:
    """The same edit (seed, views, timesteps) toward the source itself, measured against the target too: what
    further fitting alone does to the fixture's briefly trained source."""
    work = tmp_path_factory.mktemp("control")
    return _edit(base, work, synthetic_scene(base), "nerfacto", EDIT_STEPS, references={"target": target})


def test_nerfacto_edit_converges_toward_the_target(nerfacto_edit, nerfacto_control):
    """Observed (2-core CPU; source: nerfacto 500 steps with exact poses on 24 views of 32 px, 18 training / 6
    held out; 60 edit steps of 4 views): held-out PSNR to the target 13.40 -> 16.37 dB (+2.97) where the same run
    toward the source stays at 13.40, so +2.97 dB beyond further fitting; training views +6.05 dB, +14.9 dB toward
    the target beyond the move toward the source. (With the earlier 250-step source, pose refinement on and the
    primitives touching: +1.18 / +1.50 and +0.64 dB held out.)"""
    edit, control = nerfacto_edit, nerfacto_control
    assert edit["steps"] == EDIT_STEPS and edit["held_out_views"] == 6
    # Observed 2.97 and 2.10 here (two sessions), 1.91 on the CI machine (its source run differs): margin 0.41 dB.
    assert edit["psnr_gain"] >= 1.5, edit
    # Held-out views (never edited directly) end closer to the target than the same run toward the source does.
    beyond = edit["psnr_after"] - control["psnr_to_target_after"]
    assert beyond >= 1.5, (beyond, edit, control)  # observed 2.97 / 2.17: margin 0.67 dB
    assert edit["psnr_train_views_after"] >= edit["psnr_train_views_before"] + 3.0, edit  # observed 6.05: margin 3
    assert _toward_target(edit, "train") >= 5.0, edit  # observed 14.9 (away from the source): margin 9.9
    assert edit["proposal_relative_change"] > 0.01 and edit["field_relative_change"] > 0.01


def test_nerfacto_edit_toward_the_source_does_no_harm(nerfacto_control):
    """Observed: +0.07 dB held out to the source (bound: at most 0.5 dB lost; margin 0.57 dB)."""
    control = nerfacto_control
    assert control["psnr_after"] >= control["psnr_before"] - 0.5, control


def _local_change(report: dict) -> tuple[float, float, float]:
    """Held-out changes (dB): toward the local target; of the PSNR to the source outside the box; and of the PSNR
    to the source over the pixels outside the box that the full target changes (what the region must keep)."""
    return tuple(
        report[f"psnr_{name}_after"] - report[f"psnr_{name}_before"]
        for name in ("local", "outside_source", "protected_source")
    )


def test_a_nerfacto_region_edits_the_box_and_keeps_the_rest(nerfacto_local, nerfacto_edit):
    """Observed (60 steps, the 500-step source, three runs: two here, one on the CI machine): the region's edit
    +2.07 / +1.43 dB toward the local target, +0.18 / -0.03 dB to the source outside the box and +0.21 / +0.31 /
    +0.01 dB over the pixels there that the full target changes; the same edit without a region -6.30 / -3.76 /
    -2.52 dB on those (the control: without the region these pixels would change). The source run differs between
    machines (multi-threaded CPU training), and the control's loss with it: a gap between the two of at least 3 dB
    held here but not on the CI machine (2.53), so each is held to its own bound."""
    gain, kept, protected = _local_change(nerfacto_local)
    _, _, without = _local_change(nerfacto_edit)
    print("local", gain, kept, protected, without)
    assert gain >= 1.0, nerfacto_local  # observed 2.07 / 1.43: margin 0.43 dB
    assert kept >= -0.5, nerfacto_local  # the bound; observed +0.18 / -0.03
    assert protected >= -0.5, nerfacto_local  # the bound; observed +0.21 / +0.31 / +0.01
    assert without <= -1.5, nerfacto_edit  # observed -6.30 / -3.76 / -2.52: margin 1.02 dB


@pytest.fixture(scope="module")
def splat_edit(base, target, local, tmp_path_factory) -> dict:
    return _edit(base, tmp_path_factory.mktemp("splat"), target, "splat", EDIT_STEPS, local_target_data=local)


def test_a_splat_region_edits_the_box_and_keeps_the_rest(base, target, local, splat_edit, tmp_path):
    """Observed (60 steps, the 100-step splat source): the region's edit +1.12 dB toward the local target, +0.80 dB
    to the source outside the box and +0.79 dB over the pixels there that the full target changes (the short
    source still fits its own images); the same edit without a region -4.93 dB on those. With the pull of the
    pixels the region does not render toward their sources: +1.09, +0.81, +0.98 dB."""
    report = _edit(base, tmp_path, target, "splat", EDIT_STEPS, region=REGION, local_target_data=local)
    gain, kept, protected = _local_change(report)
    _, _, without = _local_change(splat_edit)
    print("local", gain, kept, protected, without)
    assert gain >= 0.5, report  # observed 1.12 / 1.09: margin 0.59 dB
    assert kept >= -0.5, report  # observed +0.80 / +0.81
    assert protected >= without + 2.5, (protected, without)  # observed 5.7 / 5.9 dB apart: margin 3.2 dB


def test_splat_edit_converges_toward_the_target(splat_edit):
    """Observed (source: splatfacto-cpu, 100 steps; 60 edit steps): held-out +2.26 dB, +2.55 beyond the move
    toward the source; training views +2.85 dB, +4.10 beyond it."""
    report = splat_edit
    assert report["psnr_gain"] >= 1.0, report  # observed 2.26: margin 1.26 dB
    assert _toward_target(report, "held_out") >= 1.0, report  # observed 2.55: margin 1.55 dB
    assert _toward_target(report, "train") >= 1.5, report  # observed 4.10: margin 2.6 dB
    assert report["psnr_train_views_after"] >= report["psnr_train_views_before"] + 1.5, report  # observed 2.85
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
