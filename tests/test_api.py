"""The public surface a plugin may import (ffrun.api) is held stable: changing it means changing
this list on purpose (and saying so in CHANGELOG.md)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ffrun.api as api

SURFACE = ["ConfigError", "DATASETS", "DataError", "DataPeek", "Dataset", "FFConv2D", "FFData", "FFLoss", "FFRunError",
           "GOODNESS", "ImageSplits", "LOSSES", "NODE_TYPES", "PROTOCOLS", "PluginError", "Protocol", "Registry",
           "RegistryError", "no_flop", "node_type"]


def test_the_public_surface_is_exactly_these_names():
    assert api.__all__ == SURFACE
    assert sorted(dir(api)) == SURFACE


@pytest.mark.parametrize("name", SURFACE)
def test_every_public_name_is_the_object_ffrun_itself_uses(name):
    import ffrun.core.layers
    import ffrun.core.losses
    import ffrun.core.trainer
    import ffrun.errors
    import ffrun.experiment.datasets
    import ffrun.experiment.nodes
    import ffrun.experiment.protocols
    import ffrun.registry
    owners = [ffrun.errors, ffrun.registry, ffrun.experiment.protocols, ffrun.experiment.datasets, ffrun.core.trainer,
              ffrun.core.losses, ffrun.core.layers, ffrun.experiment.nodes]
    assert any(getattr(owner, name, None) is getattr(api, name) for owner in owners)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'LOSS_NAMES'"):
        api.LOSS_NAMES  # noqa: B018


def test_registering_a_protocol_or_dataset_needs_no_tensorflow():
    """A plugin of protocols or datasets is imported before every run's check, and by tools that
    only read configs: importing what it registers with does not pull in TensorFlow."""
    script = ("import json, sys\n"
              "from ffrun.api import PROTOCOLS, DATASETS, Protocol, Dataset, ImageSplits, Registry\n"
              "print(json.dumps([len(PROTOCOLS), len(DATASETS), 'tensorflow' in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    protocols, datasets, tensorflow = json.loads(proc.stdout.strip().splitlines()[-1])
    assert protocols >= 5 and datasets >= 5 and tensorflow is False
