"""The ``ffrun`` console script: a thin Hydra main around ``runner.train``."""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger("ffrun")


def run_job(cfg: DictConfig) -> float:
    """Run one job of a run or a sweep. Returns the best validation accuracy (what a sweeper
    maximizes). A bad input ends a single run with one line and exit code 2; in a sweep the job
    records its failure and the sweep goes on."""
    from ffrun import reporting, runner
    from ffrun.errors import FFRunError

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    console = reporting.make_console()
    reporting.route_logging_to(console)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        results = runner.train(cfg, run_dir, console, overrides=list(hc.overrides.task))
    except FFRunError as exc:
        log.error("%s", exc)
        if multirun:
            reporting.write_json(run_dir / "results.json", {"status": "failed", "reason": str(exc)})
            return math.nan
        sys.exit(2)
    if results["status"] != "completed" and not multirun:
        sys.exit(1)
    best = results.get("best_val_acc")
    return math.nan if best is None else float(best)


@hydra.main(config_path="pkg://ffrun.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    return run_job(cfg)


if __name__ == "__main__":
    main()
