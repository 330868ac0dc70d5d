"""2D media as scenes seen through degenerate cameras, and ``csd-edit-2d``.

A panorama is seen through crop cameras: each view is a window of one latent canvas (``panorama``). A video is
seen through one camera per frame: each view is a frame with its own latent (``video``, ``latents``). The
shared pieces: ``io`` reads and writes images, videos and folders of frames (the package's one reader),
``encoding`` moves media through the VAE, ``jobs`` turns an input into a scene and back, ``optimise`` runs the
CSD-Edit steps with SGD, ``output`` writes output folders safely, and ``cli`` is the command.
"""
