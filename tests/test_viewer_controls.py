"""Where ``EditControls.install`` puts the "CSD-Edit" group in a real viser server (no browser, no training).

The viewer is a stand-in with what ``install`` reads: ``viser_server`` and ``control_panel``, the latter
nerfstudio's own ``ControlPanel`` built inside a "Control" tab the way ``nerfstudio.viewer.viewer.Viewer`` builds
it (root buttons and markdown, then a tab group). ``scripts/viewer_screenshot.py`` checks the same in Chromium.
"""

from __future__ import annotations

import inspect
import socket
from types import SimpleNamespace

import pytest

viser = pytest.importorskip("viser")
# nerfstudio.utils.writer (which editing imports) cannot be imported first: a circular import with its configs.
import nerfstudio.configs.base_config  # noqa: E402, F401

from csd_nerf.nerf.editing import EditControls, EditSettings  # noqa: E402

EXPECTED = ["Edit instruction", "Text guidance scale", "Image guidance scale"]
REGION = ["Edit inside the box only", "Box center", "Box rotation", "Box scale", "Use the crop box"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server():
    kwargs = {"host": "127.0.0.1", "port": _free_port()}
    if "verbose" in inspect.signature(viser.ViserServer).parameters:
        kwargs["verbose"] = False
    server = viser.ViserServer(**kwargs)
    try:
        yield server
    finally:
        server.stop()


def _viewer(server):
    """What nerfstudio's Viewer builds before the trainer installs the edit controls."""
    from nerfstudio.viewer.control_panel import ControlPanel

    gui = server.gui
    gui.add_button("Resume Training")
    gui.add_markdown("Step: 0")
    tabs = gui.add_tab_group()
    with tabs.add_tab("Control") as control_tab:
        panel = ControlPanel(server, False, 10.0, lambda: None, lambda _: None, lambda _: None)
    with tabs.add_tab("Render"):
        gui.add_number("Render FOV", 50.0)
    with control_tab:  # what the Viewer adds to the Control tab last
        with gui.add_folder("Custom Elements"):
            gui.add_checkbox("something of the model", False)
    return SimpleNamespace(viser_server=server, control_panel=panel), control_tab


def _label(handle) -> str | None:
    impl = getattr(handle, "_impl", None)
    return getattr(impl, "label", None)


def test_install_puts_the_group_first_in_the_control_tab(server):
    viewer, control_tab = _viewer(server)
    before = dict(control_tab._children)
    controls = EditControls(EditSettings(prompt="Turn the ball blue"))

    controls.install(viewer)

    containers = server.gui._container_handle_from_id
    new = [c for key, c in control_tab._children.items() if key not in before]
    assert len(new) == 1, "one new thing in the Control tab: the folder"
    folder = new[0]
    assert isinstance(folder, viser.GuiFolderHandle)
    assert folder._parent_container_id == control_tab._id
    assert containers[folder._id] is folder
    # Above nerfstudio's own controls and folders ("Train Speed", "Render Options", ..., "Custom Elements").
    assert folder.order < min(c.order for key, c in control_tab._children.items() if key in before)

    children = sorted(folder._children.values(), key=lambda h: h.order)
    elements, region = children[:-1], children[-1]
    assert [_label(h) for h in elements] == EXPECTED
    assert [h for h in elements] == [e.gui_handle for e in controls.elements]
    assert all(h._impl.parent_container_id == folder._id for h in elements)
    # The edit region's own folder comes last, with its switch, the box's numbers and "Use the crop box".
    assert isinstance(region, viser.GuiFolderHandle)
    assert [_label(h) for h in sorted(region._children.values(), key=lambda h: h.order)] == REGION
    # Nothing of ours went anywhere else: not the root, not "Custom Elements".
    elsewhere = [
        _label(h) for h in server.gui._gui_input_handle_from_id.values() if h._impl.parent_container_id != folder._id
    ]
    assert not set(EXPECTED) & set(elsewhere)
    # The thread's current container is restored: what the caller adds next goes where it would have gone.
    assert server.gui._get_container_id() == "root"

    # The handles are the values the pipeline reads at its next step.
    controls.prompt.gui_handle.value = "Turn the ball red"
    controls.guidance_scale.gui_handle.value = 9.0
    assert controls.values() == {"prompt": "Turn the ball red", "guidance_scale": 9.0, "image_guidance_scale": 1.5}


def test_install_without_a_control_tab_still_adds_the_group(server):
    """Another viewer layout (no tab to find): the group goes where the caller is, and nothing raises."""
    controls = EditControls(EditSettings(prompt="Turn the ball blue"))

    controls.install(SimpleNamespace(viser_server=server, control_panel=SimpleNamespace()))

    root = server.gui._container_handle_from_id["root"]
    folders = [c for c in root._children.values() if isinstance(c, viser.GuiFolderHandle)]
    assert len(folders) == 1
    assert [_label(h) for h in sorted(folders[0]._children.values(), key=lambda h: h.order)][:3] == EXPECTED


def test_the_region_is_drawn_moved_and_taken_from_the_crop_box(server):
    """The box's 12 edges and its gizmo are in the scene while the region is on; "Use the crop box" copies the
    viewer's crop box (nerfstudio's own ControlPanel) into the region."""
    from csd_nerf.nerf.region import RegionConfig

    viewer, _ = _viewer(server)
    controls = EditControls(EditSettings(prompt="x", region=RegionConfig(center=(0.1, 0.0, 0.0), scale=(1, 1, 1))))
    controls.install(viewer)
    region = controls.region
    assert len(region._lines) == 12 and region._gizmo.visible
    assert tuple(region._gizmo.position) == pytest.approx((1.0, 0.0, 0.0))  # viser's scene is the world x10
    viewer.control_panel._crop_center.value = (0.2, -0.3, 0.4)
    viewer.control_panel._crop_scale.value = (0.5, 0.6, 0.7)
    viewer.control_panel._crop_rot.value = (0.0, 0.0, 0.5)
    region.take_crop_box()
    taken = region.region()
    assert taken.center == pytest.approx((0.2, -0.3, 0.4)) and taken.scale == pytest.approx((0.5, 0.6, 0.7))
    assert taken.rotation == pytest.approx((0.0, 0.0, 0.5), abs=1e-6)
    region.enabled.value = False
    region.draw()
    assert region._lines == [] and not region._gizmo.visible and not region.region().enabled
