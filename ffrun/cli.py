"""The ``ffrun`` console script: a thin Hydra main around ``runner.train``."""
from __future__ import annotations

import logging
import math
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
    (``stop_after_epoch``, and ``epochs`` to extend a run), and how to show it (``progress``).

    Extending is exact only when nothing else depends on the planned length: a constant learning
    rate (a cool-down is planned over the total) and no readout-only stage after the FF epochs."""
    from ffrun.errors import ConfigError
    saved = load_run_config(run_dir)
    saved.stop_after_epoch, saved.progress = cfg.stop_after_epoch, cfg.progress
    if any(o.split("=", 1)[0] == "epochs" for o in task_overrides) and int(cfg.epochs) != int(saved.epochs):
        if saved.get("lr_schedule", "constant") != "constant" or int(saved.get("readout_epochs") or 0):
            raise ConfigError("epochs can be changed on resume only for runs with lr_schedule=constant and "
                              "readout_epochs=0 (otherwise the schedule depends on the planned length)")
        saved.epochs = int(cfg.epochs)
    ignored = [o for o in task_overrides
               if o.split("=", 1)[0].lstrip("+~") not in ("resume", "stop_after_epoch", "progress", "epochs")]
    if ignored:
        logging.getLogger("ffrun").warning("resume keeps the run's saved config; ignored: %s", " ".join(ignored))
    return saved


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
