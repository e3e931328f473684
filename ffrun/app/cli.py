"""The ``ffrun`` console script: a thin Hydra main around ``loop.train``."""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ffrun.app.overrides import override_problem, renamed_preset_notes

log = logging.getLogger("ffrun")


class _DropRetracingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


#: exit codes of a single run: bad input 2 (as argparse), a failed run 1, an interrupted one 130 (Ctrl-C)
EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 130}
EXIT_BAD_INPUT = 2


def _log_to_file_only(level: int, message: str, exc_info=None) -> None:
    """Write a record to the run's ffrun.log (Hydra's file handler) but not to the console, which
    gets the one stderr line instead of a second copy (or a traceback)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_job(cfg: DictConfig) -> float:
    """Run one job of a run or a sweep, and map its outcome to results.json, one stderr line and an
    exit code (lightning-hydra-template's task_wrapper). Returns the best validation accuracy (what
    a sweeper maximizes); a sweep's failed job returns NaN and the sweep goes on with the others.

    Bad input (FFRunError) exits 2; any other error (a bug, a full disk) is a failed run, exit 1,
    its traceback in ffrun.log; both leave results.json ``failed`` with the reason, keeping every
    field the run had already written."""
    from ffrun import _import_tensorflow_quietly
    _import_tensorflow_quietly()
    from ffrun.run import loop, outputs, resume
    from ffrun.errors import FFRunError
    logging.getLogger("absl").setLevel(logging.WARNING)   # TF's checkpoint manager chatters at INFO
    # TrainMgr builds one graph per pass on purpose (each traced once; tests count the traces), which
    # TF's heuristic reports as "excessive retracing". Drop that one message, keep every other.
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _DropRetracingWarning) for f in tf_logger.filters):
        tf_logger.addFilter(_DropRetracingWarning())

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    console = outputs.make_console()
    outputs.route_logging_to(console)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    try:
        if cfg.resume:
            run_dir = Path(cfg.resume).expanduser().resolve()
            saved = resume.config_for_resume(run_dir, cfg, overrides)
            results = loop.train(saved, run_dir, console, resume=True, overrides=overrides)
        else:
            results = loop.train(cfg, run_dir, console, overrides=overrides)
        status, reason = results["status"], results.get("reason")
        code = EXIT_CODES[status]
    except FFRunError as exc:
        status, reason, code = "failed", str(exc), EXIT_BAD_INPUT
        _log_to_file_only(logging.ERROR, reason)
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the run says so and the sweep goes on
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        status, reason, code = "failed", f"{type(exc).__name__}: {first}", 1
        _log_to_file_only(logging.ERROR, f"run failed: {reason}", exc_info=sys.exc_info())
    if status == "failed":
        outputs.record_failure(run_dir / "results.json", reason)
        print(f"ffrun: {reason} ({run_dir})", file=sys.stderr)
    if code and not multirun:
        sys.exit(code)
    best = results.get("best_val_acc") if status != "failed" else None
    return math.nan if best is None else float(best)


@hydra.main(config_path="pkg://ffrun.conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    return run_job(cfg)


def main() -> None:
    """The ``ffrun`` console script: overrides that would not compose, and a ``resume=`` that must
    not start, stop here with one line before Hydra makes or touches a run folder; everything else
    goes to Hydra's main."""
    # A full disk makes every log write fail; logging would print a traceback for each to stderr,
    # burying the one line that says what happened.
    logging.raiseExceptions = False
    problem = override_problem(sys.argv[1:])
    if problem is not None:
        print(f"ffrun: {problem}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    from ffrun.run.resume import resume_problem
    stop = resume_problem(sys.argv[1:])
    if stop is not None:
        line, code = stop
        print(f"ffrun: {line}", file=sys.stderr if code else sys.stdout)
        sys.exit(code)
    for note in renamed_preset_notes(sys.argv[1:]):   # after the checks: bad input stays one line
        print(f"ffrun: {note}", file=sys.stderr)
    hydra_main()


if __name__ == "__main__":
    main()
