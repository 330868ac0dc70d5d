"""2D media as scenes seen through degenerate cameras, and ``csd-edit-2d``.

A panorama is seen through crop cameras: each view is a window of one latent canvas (``panorama``). A video is
seen through one camera per frame: each view is a frame with its own latent (``video``, ``latents``). The shared
pieces: ``io`` is the package's one reader and writer of media (``images`` for single pictures with their alpha
and the size limit, ``video_files`` for videos, GIFs and frame folders kept as they came, ``audio`` for the
sound carried into an edited MP4, ``errors`` for the one-line error naming a file), ``mask`` reads a mask (what
to edit) and turns it into a latent weight and a pixel composite, ``encoding`` moves media through the VAE,
``jobs`` turns an input into a scene and back, ``optimise`` runs the CSD-Edit steps with SGD, ``output`` writes
output folders safely, ``progress`` and ``record`` say what a run is doing and did, and ``cli`` is the command.
"""
