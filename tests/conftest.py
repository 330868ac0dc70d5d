"""Test-wide settings: everything offline, generated models in a per-session cache."""

from __future__ import annotations

import os

import pytest

# No test may reach the network: the Hub client then fails at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Generated models (tiny IP2P, tiny CLIP) go to a per-session folder unless the caller chose one."""
    if "CSD_NERF_CACHE" not in os.environ:
        os.environ["CSD_NERF_CACHE"] = str(tmp_path_factory.mktemp("csd_nerf_cache"))


@pytest.fixture(scope="session")
def tiny_guidance():
    """The miniature IP2P, loaded once through the normal ``from_pretrained`` path."""
    from csd_nerf.guidance import GuidanceConfig

    return GuidanceConfig(model="tiny").setup()


@pytest.fixture
def one_torch_thread():
    """The miniature models' ops are tiny: one thread is faster, and far faster when another job shares the CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- trained scenes, shared by the nerfstudio test modules ---------------------------------------------------
# A module says which representation its ``source``/``edited`` are with ``REPRESENTATION = "splat"`` (default
# nerfacto). Each scene is trained once per session (nerf_fixtures builds it under a lock).


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """The per-session folder the trained scenes live in."""
    from nerf_fixtures import session_base

    return session_base(tmp_path_factory)


@pytest.fixture(scope="module")
def source(request, base):
    """The stock source run (nerfacto, or splatfacto-cpu where the module's REPRESENTATION is "splat")."""
    from nerf_fixtures import source_run, splat_source_run

    return (
        splat_source_run(base) if getattr(request.module, "REPRESENTATION", "nerfacto") == "splat" else source_run(base)
    )


@pytest.fixture(scope="module")
def edited(request, base):
    """The source run edited with ns-train csd-edit (or csd-edit-splat) and the tiny prior."""
    from nerf_fixtures import edited_run, splat_edited_run

    return (
        splat_edited_run(base) if getattr(request.module, "REPRESENTATION", "nerfacto") == "splat" else edited_run(base)
    )
