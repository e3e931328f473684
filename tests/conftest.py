"""Shared fixtures: compose the project's configs in-process, as the installed script would."""
from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import ffrun.conf  # noqa: F401  (registers the config schema and resolvers, as composing does)

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("FFRUN_DATA_DIR", REPO.parent / "shared" / "data")).resolve()


@functools.cache
def _config_module_hydra():
    """Hydra set up on ffrun.conf, once per pytest run (the search path and its plugins).

    It is kept here rather than left in GlobalHydra: ffrun.app.overrides composes inside its own
    ``with initialize_config_module(...)``, which refuses to start while GlobalHydra is initialized."""
    with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
        return GlobalHydra.instance().hydra


@functools.cache
def _composed(overrides: tuple[str, ...], with_hydra: bool) -> DictConfig:
    """One composition per distinct override list: composing costs ~0.2 s (setting Hydra up, well
    under 1 ms), and the resume tests compose the same lists again and again. Failures are not
    cached: a bad override raises at every call, as it should."""
    hydra = _config_module_hydra()
    gh = GlobalHydra.instance()     # after the set-up: leaving its `with` swaps the instance
    gh.clear()
    gh.initialize(hydra)
    try:
        return compose("config", overrides=list(overrides), return_hydra_config=with_hydra)
    finally:
        gh.clear()          # as the `with` block left it: code under test may initialize its own


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """Compose conf/ with overrides; with ``run_dir``, also set HydraConfig as @hydra.main would.

    Returns a fresh copy every call: tests change their config under open_dict, and must not
    change the next test's."""
    cfg = copy.deepcopy(_composed(tuple(overrides), run_dir is not None))
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
    return cfg


def colored_pixels(png: Path) -> int:
    """Pixels of a saved figure that are not gray. Axes, ticks, titles, grids and the background
    are black, gray or white; only drawn data (curves, points, a colour map) has colour, so an
    empty figure scores 0 (its file still weighs 30 KB: a size floor cannot tell)."""
    import matplotlib.image as mpimg
    import numpy as np
    rgb = mpimg.imread(png)[..., :3]
    gray = (np.abs(rgb[..., 0] - rgb[..., 1]) < 0.02) & (np.abs(rgb[..., 1] - rgb[..., 2]) < 0.02)
    return int((~gray).sum())


@pytest.fixture
def cfg_factory():
    return compose_config


@pytest.fixture
def train_tiny(tmp_path):
    """Train a tiny config on the 8x8 digits into tmp_path; returns (results, run_dir)."""
    from ffrun.run import loop, outputs

    def _train(overrides: list[str], name: str = "run"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        cfg = compose_config(["debug=tiny", *overrides])
        results = loop.train(cfg, run_dir, outputs.make_console())
        return results, run_dir
    return _train


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "mnist.npz").is_file():
        pytest.skip(f"no mnist.npz in {MNIST_DIR}")
    return MNIST_DIR
