"""``scripts/demo.py`` checks every setting before it writes anything, and its help shows the defaults."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_demo():
    """The demo as a module, loaded in the test itself: its console binds the stdout capsys has put in place."""
    spec = importlib.util.spec_from_file_location("csd_demo_args", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "0"], "--size 0: use at least 8 pixels"),
        (["--size", "-5"], "--size -5: use at least 8 pixels"),
        (["--source-steps", "0"], "--source-steps 0: use at least 1"),
        (["--edit-steps", "0"], "--edit-steps 0: use at least 1"),
        (["--particles", "0"], "--particles 0: use at least 1"),
        (["--known-answer-steps", "-1"], "--known-answer-steps -1: use at least 0"),
        (["--views", "1", "--known-answer-steps", "0"], "--views 1: use at least 2"),
        (["--prompt", b"Turn it \xff red".decode("utf-8", "surrogateescape")], "--prompt is not valid UTF-8"),
        (["--prompt", "  "], "--prompt is empty"),
    ],
)
def test_bad_settings_stop_in_one_line_before_anything_is_written(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert load_demo().main(["--output", str(out), *extra]) == 1
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("demo: ") and message in printed and "\n" not in printed, printed
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_help_shows_the_defaults_and_a_faster_first_try():
    text = " ".join(load_demo().build_parser().format_help().split())
    for default in ("(default: 40)", "(default: 600)", "(default: 150)", "(default: tiny)", "(default: 4)"):
        assert default in text, default
    assert "faster first try" in text and "--views 20 --source-steps 300 --known-answer-steps 80" in text
