"""nerfstudio integration of CSD-Edit (the ``csd-edit`` method).

Modules, one job each (none imports diffusers at import time; nerfstudio imports the method config in
every ``ns-*`` command):

- ``trainer``    CSDTrainer: loads the source run's weights only, edit steps from 0, clean checkpoints
- ``pipeline``   CSDPipeline: one CSD-Edit step per training step, viewer controls, previews
- ``particles``  training views as CSD particles (render, encode, deferred backpropagation)
- ``deferred``   chunked, reproducible rendering and backpropagation of a pixel gradient
- ``views``      cameras and source images at the render resolution
- ``model``      nerfacto without the LPIPS download, frozen poses, settled proposal sampling
- ``source``     the source run: checkpoint, config.yml inheritance, weight loading with clear errors
- ``compat``     torch >= 2.6 checkpoint compatibility for stock nerfstudio
- ``offline``    running stock ns-* commands offline (demo, tests)
- ``synthetic``  a small ray-traced scene in nerfstudio format
"""
