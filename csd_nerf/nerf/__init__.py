"""nerfstudio integration of CSD-Edit (the ``csd-edit`` and ``csd-edit-splat`` methods).

Modules, one job each (none imports diffusers at import time; nerfstudio imports the method configs in every
``ns-*`` command):

- ``trainer``        CSDTrainer: finds the source run, loads its weights only, edit steps from 0, clean
                     checkpoints, Ctrl-C / SIGTERM keep the finished steps
- ``source``         the source run: where it is, its config.yml and data, weight loading with clear errors
- ``editing``        what both pipelines share: settings, viewer controls, the edit step, previews
- ``pipeline``       ``csd-edit``: nerfacto's pipeline and scene construction
- ``splat_pipeline`` ``csd-edit-splat``: splatfacto's pipeline and scene construction
- ``view_scene``     training views as CSD particles: cached sources, preservation loss
- ``scene``          nerfacto's views: render, encode, direct or deferred backpropagation
- ``splat_scene``    splats' views: all views of a step in one rasterisation
- ``deferred``       chunked, reproducible rendering and backpropagation of a pixel gradient
- ``views``          training cameras and source images at the render size
- ``model``          nerfacto without the LPIPS download, settled proposal sampling
- ``splat_model``    splatfacto on a CPU (``splatfacto-cpu``) and the edited splat model
- ``rasterize``      a pure-torch drop-in for gsplat's rasterisation (CPU)
- ``poses``          camera poses kept from the source run
- ``preview``        the preview strip (source | render | the prior's estimate)
- ``compat``         torch >= 2.6 checkpoint compatibility for stock nerfstudio
"""
