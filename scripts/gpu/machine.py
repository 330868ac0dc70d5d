"""What is known of the GPU machine the check runs on (the device tool's README and KINDS.md, read 2026-11).

One source for the bundle script, the requirement check and the rehearsal's import fence: a package named here is
already on that machine; anything else our code imports must travel as a wheel (``scripts/gpu/bundle.txt``).
"""

from __future__ import annotations

import re

PYTHON = "python3"
"""On that machine ``python3`` is /opt/torch/.venv/bin/python3, Python 3.12.3 with torch 2.11.0+cu130."""
PYTHON_VERSION = "3.12"
PYTHON_FULL_VERSION = "3.12.3"
TRAVEL_LIMIT_BYTES = 64 * 2**20
"""Working tree + carried paths, per call (device README, Limits)."""

# KINDS.md, "Python packages already there" (the image 'cuda', read 2026-11-17).
PACKAGES = frozenset(
    """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
    jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
    llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
    multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
    nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
    nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
    nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
    patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
    py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
    pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
    setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
    torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
    typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
    """.split()
)

# KINDS.md, the pip list one session saw there; the other packages are there at a version nobody recorded.
VERSIONS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "jaxtyping": "0.3.11",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "sentencepiece": "0.2.2",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "torchmetrics": "1.9.0",
    "torchvision": "0.26.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}

# The rehearsal runs on the CPU venv with these of the machine's versions put first on the path (numpy 2.5.2 is not on
# the package index this workplace reaches: 2.4.6 is the nearest numpy 2 it has).
REHEARSAL_OVERLAY = {"numpy": "2.4.6", "transformers": "5.17.0", "huggingface-hub": "1.33.0", "tokenizers": "0.23.2"}

# Requirements the bundle's packages declare that do not travel: none of them is imported on the check's code
# paths (the rehearsal's import fence hides them and every stage still runs).
OMITTED = {
    "nerfstudio": {
        **dict.fromkeys(["open3d", "pymeshlab", "xatlas", "trimesh"], "mesh and point-cloud export (ns-export)"),
        **dict.fromkeys(["comet-ml", "wandb"], "experiment loggers (off unless chosen)"),
        **dict.fromkeys(["jupyterlab", "ipywidgets", "plotly", "mediapy"], "notebooks and plots"),
        **dict.fromkeys(["pyngrok", "python-socketio", "cryptography"], "remote viewer and tunnels"),
        **dict.fromkeys(["av", "gdown", "nuscenes-devkit"], "data download and processing"),
        **dict.fromkeys(["msgpack-numpy", "pathos"], "viewer state and multiprocessing helpers"),
    },
    "viser": dict.fromkeys(
        ["trimesh", "nodeenv", "yourdfpy", "plyfile", "pyliblzfse"],
        "viewer server features (meshes, URDF, client build)",
    ),
    "diffusers": {"importlib-metadata": "imported only on Python < 3.8 (diffusers.utils.import_utils)"},
    "csd-nerf": dict.fromkeys(
        ["av", "imageio-ffmpeg"], "reading and writing video files (the checks use frames in memory)"
    ),
}

# Declared version pins that the machine's versions break, accepted with the reason (installs use --no-deps).
ACCEPTED_CONFLICTS = {
    (
        "csd-nerf",
        "numpy",
    ): "pyproject pins numpy<2 for the CPU venv; our code and nerfstudio 1.1.5 read clean for numpy 2",
    (
        "nerfstudio",
        "protobuf",
    ): "only tensorboard's writer uses protobuf; the machine's tensorboard matches its protobuf",
}


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()
