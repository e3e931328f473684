"""Resuming a run: its saved config, what this invocation may change (how far to go), and the
checks that must pass before anything is written into the folder."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ffrun.errors import CheckpointError, ConfigError
from ffrun.run.outputs import read_json

log = logging.getLogger("ffrun")


def load_run_config(run_dir: Path) -> DictConfig:
    """The composed config a run saved in ``<run>/.hydra/config.yaml``."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an ffrun run folder (no .hydra/config.yaml)")
    return OmegaConf.load(path)


def config_for_resume(run_dir: Path, cfg: DictConfig, task_overrides: list[str]) -> DictConfig:
    """The saved config of ``run_dir`` with what belongs to this invocation: how far to go
    (``stop_after_epoch``; ``epochs`` and ``readout_epochs`` to extend a run), and how to show it
    (``progress``).

    Extending is exact only when it changes no epoch already run: more FF epochs need a constant
    learning rate (a cool-down is planned over the stage) and no readout-only stage after them; a
    longer readout-only stage needs a constant rate or no readout-only epochs before (each stage
    runs its own cool-down). An accepted extension is written to the run's ``.hydra/config.yaml``
    (the plan as first composed stays in ``.hydra/config.planned.yaml``), so that the folder says
    what it holds and a later plain ``resume=`` finishes the extended plan."""
    saved = load_run_config(run_dir)
    planned = {k: saved.get(k) for k in ("epochs", "readout_epochs")}
    saved.stop_after_epoch, saved.progress = cfg.stop_after_epoch, cfg.progress
    given = {o.split("=", 1)[0] for o in task_overrides}
    constant = saved.get("lr_schedule", "constant") == "constant"
    old_readout = int(saved.get("readout_epochs") or 0)
    if "epochs" in given and int(cfg.epochs) != int(saved.epochs):
        if not constant or old_readout:
            raise ConfigError("epochs can be changed on resume only for runs with lr_schedule=constant and "
                              "readout_epochs=0 (otherwise the schedule depends on the planned length)")
        saved.epochs = int(cfg.epochs)
    if "readout_epochs" in given and int(cfg.readout_epochs) != old_readout:
        if len(saved.schedule) < 2:
            raise ConfigError(f"mode {saved.mode.name} has no readout-only stage; readout_epochs does nothing here")
        if int(cfg.readout_epochs) < old_readout or (old_readout and not constant):
            raise ConfigError("readout_epochs can only grow on resume, and only from 0 unless "
                              "lr_schedule=constant (its cool-down is planned over the stage)")
        saved.readout_epochs = int(cfg.readout_epochs)
    changed = {k: saved.get(k) for k in planned if saved.get(k) != planned[k]}
    if changed:
        _record_extension(run_dir, changed)
    ignored = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~")
               not in ("resume", "stop_after_epoch", "progress", "epochs", "readout_epochs")]
    if ignored:
        log.warning("resume keeps the run's saved config; ignored: %s", " ".join(ignored))
    return saved


def _record_extension(run_dir: Path, changed: dict) -> None:
    hydra_dir = run_dir / ".hydra"
    on_disk = OmegaConf.load(hydra_dir / "config.yaml")
    if not (hydra_dir / "config.planned.yaml").exists():
        shutil.copy2(hydra_dir / "config.yaml", hydra_dir / "config.planned.yaml")
    for key, value in changed.items():
        on_disk[key] = value
    tmp = hydra_dir / "config.yaml.tmp"
    OmegaConf.save(on_disk, tmp)
    os.replace(tmp, hydra_dir / "config.yaml")     # atomic: a crash leaves the old or the new plan


def resume_problem(args: list[str]) -> tuple[str, int] | None:
    """(one line, exit code) when ``resume=<folder>`` must not reach Hydra, which would write
    .hydra_resume/ and ffrun.log into the folder before anything checks it: the folder is not a run
    of ffrun (exit 2), or the run is already complete and nothing asks to extend it (exit 0)."""
    given = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    folder = given.get("resume")
    if not folder:
        return None
    run_dir = Path(folder).expanduser().resolve()
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        what = "does not exist" if not run_dir.exists() else "is not an ffrun run folder (no .hydra/config.yaml)"
        return f"cannot resume {run_dir}: it {what}", 2
    results = read_json(run_dir / "results.json")
    if results.get("status") != "completed":
        return None
    try:
        saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    except Exception as exc:  # noqa: BLE001 - a damaged config is the resume's own error to report
        return f"cannot resume {run_dir}: its .hydra/config.yaml is unreadable ({type(exc).__name__})", 2
    extends = any(str(saved.get(k)) != given[k] for k in ("epochs", "readout_epochs") if k in given)
    if extends:
        return None
    return (f"{run_dir} is already complete ({results.get('epochs')} epochs); nothing was changed. "
            f"To train further: ffrun resume={run_dir} epochs=<more>; to evaluate again: ffrun-eval {run_dir}"), 0
