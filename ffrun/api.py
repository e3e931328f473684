"""What a plugin may import from ffrun: the registries it adds its components to, the base classes
they extend, the data they exchange, and the errors that reach the user as one line. Any other name
in the package may change between releases; these change only with a note in CHANGELOG.md.

    from ffrun.api import PROTOCOLS, FFData, Protocol

Names resolve on first use, so that a plugin of protocols or datasets is imported without
TensorFlow; the names of the layer code (losses, goodness, node types, ``FFData``, ``FFConv2D``)
import it, without its start-up lines. docs/extending.md shows one worked example per kind.
"""
from __future__ import annotations

import importlib

#: name -> the module that defines it
_SURFACE = {
    "Registry": "ffrun.registry",
    "FFRunError": "ffrun.errors", "ConfigError": "ffrun.errors", "DataError": "ffrun.errors",
    "RegistryError": "ffrun.errors", "PluginError": "ffrun.errors",
    "PROTOCOLS": "ffrun.experiment.protocols", "Protocol": "ffrun.experiment.protocols",
    "DATASETS": "ffrun.experiment.datasets", "Dataset": "ffrun.experiment.datasets",
    "DataPeek": "ffrun.experiment.datasets", "ImageSplits": "ffrun.experiment.datasets",
    "FFData": "ffrun.core.trainer",
    "LOSSES": "ffrun.core.losses", "FFLoss": "ffrun.core.losses", "GOODNESS": "ffrun.core.losses",
    "NODE_TYPES": "ffrun.experiment.nodes", "node_type": "ffrun.experiment.nodes", "no_flop": "ffrun.experiment.nodes",
    "FFConv2D": "ffrun.core.layers",
}
#: the modules that import TensorFlow
_TENSORFLOW = ("ffrun.core.", "ffrun.experiment.nodes")
__all__ = sorted(_SURFACE)


def __getattr__(name: str) -> object:
    module = _SURFACE.get(name)
    if module is None:
        raise AttributeError(f"module 'ffrun.api' has no attribute {name!r}")
    if module.startswith(_TENSORFLOW):
        from ffrun import _import_tensorflow_quietly
        _import_tensorflow_quietly()
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return list(__all__)
