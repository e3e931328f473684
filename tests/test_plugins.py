"""Protocols and datasets come from registries, and a plugin (``plugins: [module]`` or an installed
package's ``ffrun.plugins`` entry point) adds its own before the config is checked. A plugin that
cannot be imported, takes a name already taken, or lacks a piece its kind needs stops ffrun with one
line and exit 2, before any run folder is made.

The in-process tests below register nothing (every case is refused), so the registries the other
tests read stay ffrun's own; the plugins that do register run in a subprocess of the installed script."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from ffrun.errors import ConfigError, PluginError, RegistryError
from ffrun.experiment.datasets import DATASETS, Dataset
from ffrun.experiment.protocols import PROTOCOLS, Protocol, Split

FFRUN = shutil.which("ffrun") or str(Path(sys.executable).parent / "ffrun")


def _options(group: str) -> set[str]:
    return {f.name[:-5] for f in files("ffrun.conf").joinpath(group).iterdir() if f.name.endswith(".yaml")}


def test_every_builtin_option_is_a_registered_component():
    """conf/protocol/ and conf/data/ hold one YAML per registered protocol and dataset: a YAML
    without its component (or the reverse) would be a choice that fails only when run."""
    assert set(PROTOCOLS.names()) == _options("protocol")
    assert set(DATASETS.names()) == _options("data")


@dataclasses.dataclass
class _Config:
    name: str = "mine"


class _Source:
    def source(self, x, y, stream):
        return None, None


@pytest.mark.parametrize("cls, reason", [
    (type("NotAProtocol", (), {"name": "mine"}), "must be a subclass of ffrun.api.Protocol"),
    (type("Misnamed", (_Source, Protocol), {"name": "other", "config": _Config}), "class attribute name is 'other'"),
    (type("NoSource", (Protocol,), {"name": "mine", "config": _Config}), "must define source"),
    (type("NoConfig", (_Source, Protocol), {"name": "mine"}), "needs a config dataclass"),
    (type("ConfigNamesAnother", (_Source, Protocol), {"name": "mine", "config": dataclasses.make_dataclass(
        "C", [("name", str, dataclasses.field(default="yours"))])}), "needs a field name: str = 'mine'"),
])
def test_a_protocol_lacking_a_piece_is_refused_at_registration(cls, reason):
    with pytest.raises(RegistryError, match=f"protocol 'mine' from .*{reason}"):
        PROTOCOLS.add("mine", cls)
    assert "mine" not in PROTOCOLS


def test_a_protocol_name_already_taken_is_refused_naming_both():
    other = type("MySplit", (Split,), {"config": Split.config})
    with pytest.raises(RegistryError, match=r"protocol 'split' from .*MySplit clashes with "
                                            r"ffrun.experiment.protocols.split.Split"):
        PROTOCOLS.add("split", other)
    assert PROTOCOLS.get("split") is Split


class _Load:
    def load(self, path, num_classes):
        return ()


@pytest.mark.parametrize("cls, reason", [
    (type("NotADataset", (), {"name": "mine"}), "must be a subclass of ffrun.api.Dataset"),
    (type("NoLoad", (Dataset,), {"name": "mine"}), "must define load"),
    (type("Misnamed", (_Load, Dataset), {"name": "theirs"}), "class attribute name is 'theirs'"),
    (type("BadDefaults", (_Load, Dataset), {"name": "mine", "defaults": {"name": "x"}}), "defaults must map data keys"),
])
def test_a_dataset_lacking_a_piece_is_refused_at_registration(cls, reason):
    with pytest.raises(RegistryError, match=f"dataset 'mine' from .*{reason}"):
        DATASETS.add("mine", cls)
    assert "mine" not in DATASETS


def test_an_unknown_dataset_lists_the_registered_ones(cfg_factory):
    from ffrun.experiment.datasets import load_splits
    from ffrun.experiment.schema import typed
    cfg = cfg_factory(["debug=tiny", "data.name=pngs"])
    with pytest.raises(ConfigError, match="data.name: unknown dataset 'pngs'; known: cifar10, digits, "
                                          "fashion_mnist, mnist, npz"):
        typed(cfg)
    with pytest.raises(ConfigError, match="unknown dataset 'pngs'"):
        load_splits("pngs")


def test_protocol_name_picks_the_protocol_with_its_own_keys():
    """protocol.name=<name> is protocol=<name>: the keys are then the chosen protocol's, not those
    of the option it replaces (five_digits has no splitting key)."""
    from ffrun.app.overrides import override_problem, protocol_name_as_choice
    args = protocol_name_as_choice(["debug=tiny", "protocol.name=split", "protocol.splitting=same"])
    assert args == ["debug=tiny", "protocol=split", "protocol.splitting=same"]
    assert override_problem(args) is None
    assert "no config 'splt' in group 'protocol'; did you mean protocol=split?" in \
        override_problem(protocol_name_as_choice(["protocol.name=splt"]))


def test_a_protocol_name_set_under_another_protocols_keys_is_refused(cfg_factory):
    from omegaconf import open_dict

    from ffrun.experiment.schema import typed
    cfg = cfg_factory(["debug=tiny"])
    with open_dict(cfg):
        cfg.protocol.name = "split"
    with pytest.raises(ConfigError, match="protocol.name=split names another protocol .* choose it with protocol=split"):
        typed(cfg)
    cfg.protocol.name = "nope"
    with pytest.raises(ConfigError, match="unknown protocol 'nope'; known: competitive, five_digits, hybrid"):
        typed(cfg)


@pytest.mark.parametrize("args, wanted", [
    (["debug=tiny"], []),
    (["debug=tiny", "plugins=[my_lab.losses,other]"], ["my_lab.losses", "other"]),
    (["plugins=[a],[b]", "units=8"], ["a", "b"]),          # a sweep: every job's plugins
])
def test_the_plugins_asked_for_are_read_before_the_config_is_checked(args, wanted):
    from ffrun.app.overrides import requested_plugins
    assert requested_plugins(args) == wanted


def test_a_preset_of_the_users_own_lists_its_plugins(tmp_path):
    """A preset in a config folder of the user's (hydra.searchpath) names the plugins it needs."""
    from ffrun.app.overrides import requested_plugins
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "lab_run.yaml").write_text("# @package _global_\nplugins: [my_lab.protocols]\nunits: 8\n")
    args = [f"hydra.searchpath=[file://{tmp_path}]", "experiment=lab_run"]
    assert requested_plugins(args) == ["my_lab.protocols"]
    assert requested_plugins([*args, "plugins=[other]"]) == ["other"]      # the command line wins, as in Hydra


def test_a_resumed_run_loads_the_plugins_it_was_started_with(tmp_path):
    from ffrun.app.overrides import requested_plugins
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("plugins: [my_lab.protocols]\n")
    assert requested_plugins([f"resume={tmp_path}"]) == ["my_lab.protocols"]


@pytest.mark.parametrize("module, message", [
    ("ffrun_no_such_plugin", "plugin ffrun_no_such_plugin cannot be imported: ModuleNotFoundError: "
                             "No module named 'ffrun_no_such_plugin'"),
    ("my lab", "plugins: 'my lab' is not a module's import path (such as my_lab.losses)"),
])
def test_a_plugin_that_cannot_be_imported_is_one_line(module, message):
    from ffrun.experiment.plugins import load_plugins
    with pytest.raises(PluginError) as caught:
        load_plugins([module])
    assert str(caught.value) == message


# --- through the installed script ----------------------------------------------------------------

def _ffrun(args: list[str], cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", **(env_extra or {})}
    return subprocess.run([FFRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


BROKEN = {
    "clash": ("from ffrun.api import PROTOCOLS\n"
              "from ffrun.experiment.protocols import Split\n"
              "class MySplit(Split):\n    pass\n"
              "PROTOCOLS.add('split', MySplit)\n",
              "ffrun: plugin clash: protocol 'split' from clash.MySplit clashes with "
              "ffrun.experiment.protocols.split.Split, which is registered under that name; pick another name"),
    "no_source": ("from dataclasses import dataclass\n"
                  "from ffrun.api import PROTOCOLS, Protocol\n"
                  "@dataclass\nclass C:\n    name: str = 'mine'\n"
                  "@PROTOCOLS.register()\nclass Mine(Protocol):\n    name = 'mine'\n    config = C\n",
                  "ffrun: plugin no_source: protocol 'mine' from no_source.Mine: must define source(x, y, stream) "
                  "-> (positives, draw of negatives)"),
    "fails": ("import numpy\nraise RuntimeError('the lab server is down')\n",
              "ffrun: plugin fails cannot be imported: RuntimeError: the lab server is down"),
    "missing": (None, "ffrun: plugin missing cannot be imported: ModuleNotFoundError: No module named 'missing'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_plugin_stops_ffrun_with_one_line_before_any_run_folder(tmp_path, name):
    source, line = BROKEN[name]
    if source is not None:
        (tmp_path / f"{name}.py").write_text(source)     # beside the user, as `python -m` finds a module
    proc = _ffrun(["debug=tiny", f"plugins=[{name}]", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def _install_entry_point(site: Path, value: str) -> None:
    """A package installed in ``site`` (on PYTHONPATH) whose ffrun.plugins entry point is ``value``."""
    info = site / "lab_plugins-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-plugins\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[ffrun.plugins]\nlab = {value}\n")


@pytest.mark.slow
def test_an_installed_entry_point_registers_a_protocol_usable_by_name(tmp_path):
    """The entry point names a function: ffrun calls it, and its protocol composes from its config
    alone (no YAML file in conf/protocol/)."""
    site = tmp_path / "site"
    _install_entry_point(site, "lab_plugin:register")
    (site / "lab_plugin.py").write_text("def register():\n    import protocol_shuffled_pixels  # noqa: F401\n")
    examples = Path(__file__).resolve().parents[1] / "examples"
    run = tmp_path / "run"
    proc = _ffrun(["debug=tiny", "epochs=1", "readout_epochs=1", "protocol=shuffled_pixels", "protocol.fraction=0.5",
                   f"hydra.run.dir={run}"], cwd=tmp_path, env_extra={"PYTHONPATH": f"{site}{os.pathsep}{examples}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "completed"
    assert "fraction: 0.5" in (run / ".hydra" / "config.yaml").read_text()


@pytest.mark.slow
def test_an_entry_point_that_clashes_is_one_line(tmp_path):
    site = tmp_path / "site"
    _install_entry_point(site, "lab_plugin")
    (site / "lab_plugin.py").write_text(BROKEN["clash"][0])
    proc = _ffrun(["debug=tiny", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env_extra={"PYTHONPATH": str(site)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ffrun: plugin lab (entry point lab_plugin of lab-plugins): protocol 'split' from lab_plugin.MySplit clashes "
        "with ffrun.experiment.protocols.split.Split, which is registered under that name; pick another name"]
    assert not (tmp_path / "run").exists()
