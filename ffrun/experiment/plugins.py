"""Plugins: modules outside ffrun that register their own components (losses, node types, goodness
functions, readouts, protocols, datasets) in ffrun's registries when they are imported.

Two sources, both loaded before the config is checked, so that the schema knows the plugins' names:

- the installed packages' entry points in the group ``ffrun.plugins`` (every one of them, always);
  an entry point names a module, or a function that registers the components when called;
- the config's ``plugins: [my_lab.losses, ...]`` list of import paths, imported as ``python -m``
  would: from the current folder first, then ``PYTHONPATH`` and the installed packages.

A plugin that cannot be imported is a :class:`~ffrun.errors.PluginError`; a name it registers that
is taken, or a component that lacks a piece its kind requires, a
:class:`~ffrun.errors.RegistryError`. Both are one line, which names the plugin.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points

from ffrun.errors import FFRunError, PluginError, RegistryError
from ffrun.experiment.schema import register_configs

#: the entry-point group an installed package declares its plugin in (pyproject.toml:
#: ``[project.entry-points."ffrun.plugins"] my_lab = "my_lab.ffrun_plugin"``)
ENTRY_POINT_GROUP = "ffrun.plugins"


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Load every ``ffrun.plugins`` entry point, then import ``modules``, then put the protocols and
    datasets they registered into Hydra's ConfigStore (``protocol=<name>``, ``data=<name>``).
    Loading a plugin twice registers nothing twice: Python imports a module once."""
    found = entry_points(group=ENTRY_POINT_GROUP)
    if modules or found:
        # a plugin of losses or layers imports TensorFlow: loaded here first, so that its start-up
        # lines (oneDNN, CUDA probing) stay off the console and a refusal is still one line
        from ffrun import _import_tensorflow_quietly
        _import_tensorflow_quietly()
    for ep in found:
        _load(f"plugin {ep.name} (entry point {ep.value} of {ep.dist.name if ep.dist else 'an installed package'})",
              ep.load)
    cwd = os.getcwd()
    if modules and cwd not in sys.path:
        sys.path.insert(0, cwd)     # as `python -m` does: a module beside the user's config is found
    for module in modules:
        if not isinstance(module, str) or not all(part.isidentifier() for part in module.split(".")):
            raise PluginError(f"plugins: {module!r} is not a module's import path (such as my_lab.losses)")
        _load(f"plugin {module}", lambda module=module: importlib.import_module(module))
    register_configs()


def _load(what: str, load: Callable[[], object]) -> None:
    """Run ``load`` (an import), then call what it gave if that is a function; any failure becomes
    one line naming the plugin."""
    try:
        loaded = load()
        if inspect.isfunction(loaded):
            loaded()
    except RegistryError as exc:
        raise RegistryError(f"{what}: {exc}") from None
    except FFRunError as exc:
        raise PluginError(f"{what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the plugin raised, the user gets one line naming it
        first = (str(exc).strip().splitlines() or [""])[0]
        raise PluginError(f"{what} cannot be imported: {type(exc).__name__}: {first}") from None
