"""The edit region in the nerfstudio viewer: a box drawn in the scene, moved with a gizmo, sized with numbers, or
taken from the viewer's own crop box; the pipeline applies it at the next step.

Coordinates are nerfstudio's world, as the viewer's crop box shows them; viser's scene is that world scaled by
``VISER_NERFSTUDIO_SCALE_RATIO``.
"""

from __future__ import annotations

from typing import Any

from csd_nerf.nerf.region import Box, RegionConfig

__all__ = ["RegionControls"]

_COLOUR = (255, 140, 0)


def _viser_scale() -> float:
    try:
        from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

        return float(VISER_NERFSTUDIO_SCALE_RATIO)
    except ImportError:  # pragma: no cover - nerfstudio 1.1.5 has it
        return 10.0


class RegionControls:
    """A "Edit region" folder: on/off, centre, rotation (roll, pitch, yaw in radians), scale, "Use the crop box".

    Changes are read by :meth:`region` between steps; the box is redrawn (and its gizmo moved) as they happen.
    """

    def __init__(self, region: RegionConfig) -> None:
        from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerCheckbox, ViewerVec3

        redraw = lambda _: self.draw()  # noqa: E731
        self.enabled = ViewerCheckbox(
            "Edit inside the box only", region.enabled, cb_hook=redraw, hint="the rest of the scene is kept"
        )
        self.center = ViewerVec3("Box center", tuple(region.center or (0.0, 0.0, 0.0)), step=0.01, cb_hook=redraw)
        self.rotation = ViewerVec3("Box rotation", tuple(region.rotation), step=0.01, cb_hook=redraw)
        self.scale = ViewerVec3("Box scale", tuple(region.scale or (1.0, 1.0, 1.0)), step=0.01, cb_hook=redraw)
        self.from_crop = ViewerButton("Use the crop box", cb_hook=lambda _: self.take_crop_box())
        self.margin = region.margin
        self.preservation_weight = region.preservation_weight
        self._viewer: Any = None
        self._lines: list[Any] = []
        self._gizmo: Any = None

    @property
    def elements(self) -> list[Any]:
        return [self.enabled, self.center, self.rotation, self.scale, self.from_crop]

    def region(self) -> RegionConfig:
        """The region as the controls show it now."""
        on = bool(self.enabled.value)
        return RegionConfig(
            center=tuple(float(v) for v in self.center.value) if on else None,
            rotation=tuple(float(v) for v in self.rotation.value),
            scale=tuple(float(v) for v in self.scale.value) if on else None,
            margin=self.margin,
            preservation_weight=self.preservation_weight,
        )

    def install(self, viewer: Any) -> None:
        """Add the elements (inside the caller's folder) and draw the box in ``viewer``'s scene."""
        server = viewer.viser_server
        self._viewer = viewer
        for element in self.elements:
            element.install(server)
        self._gizmo = server.scene.add_transform_controls(
            "/csd_edit/region_gizmo", scale=0.5 * _viser_scale(), disable_sliders=True, depth_test=False
        )

        @self._gizmo.on_update
        def _moved(handle: Any) -> None:
            from viser import transforms as vtf

            ratio = _viser_scale()
            self.center.value = tuple(float(p) / ratio for p in handle.position)
            rpy = vtf.SO3(handle.wxyz).as_rpy_radians()
            self.rotation.value = (float(rpy.roll), float(rpy.pitch), float(rpy.yaw))

        self.draw()

    def take_crop_box(self) -> None:
        """Copy the viewer's crop box (its "Crop center / rotation / scale") into the region and turn it on."""
        panel = getattr(self._viewer, "control_panel", None)
        if panel is None:
            return
        obb = panel.crop_obb
        from viser import transforms as vtf

        rpy = vtf.SO3.from_matrix(obb.R.numpy()).as_rpy_radians()
        self.center.value = tuple(float(v) for v in obb.T)
        self.rotation.value = (float(rpy.roll), float(rpy.pitch), float(rpy.yaw))
        self.scale.value = tuple(float(v) for v in obb.S)
        self.enabled.value = True
        self.draw()

    def draw(self) -> None:
        """(Re)draw the box's 12 edges and place the gizmo at its centre; hidden when the region is off."""
        if self._viewer is None:
            return
        from viser import transforms as vtf

        server, ratio = self._viewer.viser_server, _viser_scale()
        region = self.region()
        box: Box | None = region.box()
        for line in self._lines:
            line.remove()
        self._lines = []
        self._gizmo.visible = box is not None
        if box is None:
            return
        corners = (box.corners() * ratio).tolist()
        for k, (a, b) in enumerate(Box.EDGES):
            self._lines.append(
                server.scene.add_spline_catmull_rom(
                    f"/csd_edit/region_edge_{k}", (corners[a], corners[b]), line_width=3.0, color=_COLOUR
                )
            )
        self._gizmo.position = tuple(float(v) * ratio for v in region.center)
        self._gizmo.wxyz = tuple(float(v) for v in vtf.SO3.from_rpy_radians(*region.rotation).wxyz)
