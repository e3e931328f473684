"""The ``ffrun`` console script: a thin Hydra main around ``runner.train``."""
from __future__ import annotations

import logging
import math
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("ffrun")


def register_resolvers() -> None:
    """``${ffrun_pick:a,b}``: a unless it is null/empty, else b; ``${ffrun_if:c,x}``: x if c else null.
    They let ``resume=<folder>`` point Hydra's run dir at the resumed folder."""
    if not OmegaConf.has_resolver("ffrun_pick"):
        OmegaConf.register_new_resolver("ffrun_pick", lambda a, b: a if a not in (None, "") else b)
        OmegaConf.register_new_resolver("ffrun_if", lambda c, x: x if c not in (None, "") else None)


def load_run_config(run_dir: Path) -> DictConfig:
    """The composed config a run saved in ``<run>/.hydra/config.yaml``."""
    from ffrun.errors import CheckpointError
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
    from ffrun.errors import ConfigError
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
        logging.getLogger("ffrun").warning("resume keeps the run's saved config; ignored: %s", " ".join(ignored))
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


class _DropRetracingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def run_job(cfg: DictConfig) -> float:
    """Run one job of a run or a sweep. Returns the best validation accuracy (what a sweeper
    maximizes). A bad input ends a single run with one line and exit code 2; in a sweep the job
    records its failure and the sweep goes on."""
    from ffrun import _import_tensorflow_quietly
    _import_tensorflow_quietly()
    from ffrun import reporting, runner
    from ffrun.errors import FFRunError
    logging.getLogger("absl").setLevel(logging.WARNING)   # TF's checkpoint manager chatters at INFO
    # TrainMgr builds one graph per pass on purpose (each traced once; tests count the traces), which
    # TF's heuristic reports as "excessive retracing". Drop that one message, keep every other.
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _DropRetracingWarning) for f in tf_logger.filters):
        tf_logger.addFilter(_DropRetracingWarning())

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    console = reporting.make_console()
    reporting.route_logging_to(console)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        if cfg.resume:
            run_dir = Path(cfg.resume).expanduser().resolve()
            saved = config_for_resume(run_dir, cfg, list(hc.overrides.task))
            results = runner.train(saved, run_dir, console, resume=True, overrides=list(hc.overrides.task))
        else:
            results = runner.train(cfg, run_dir, console, overrides=list(hc.overrides.task))
    except FFRunError as exc:
        log.error("%s", exc)
        if not cfg.resume:   # a failed resume must not overwrite the run's own results
            reporting.write_json(run_dir / "results.json", {"status": "failed", "reason": str(exc)})
        if multirun:
            return math.nan
        sys.exit(2)
    if results["status"] != "completed" and not multirun:
        sys.exit(130 if results["status"] == "interrupted" else 1)
    best = results.get("best_val_acc")
    return math.nan if best is None else float(best)


register_resolvers()


@hydra.main(config_path="pkg://ffrun.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return run_job(cfg)


if __name__ == "__main__":
    main()
