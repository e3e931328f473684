"""The ``ffrun`` console script: a thin Hydra main around ``loop.train``."""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ffrun.app.overrides import override_problem, plugin_problem, protocol_name_as_choice, renamed_preset_notes

log = logging.getLogger("ffrun")


class _DropRetracingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


#: exit codes of a single run: bad input 2 (as argparse), a failed run 1, a run interrupted by Ctrl-C
#: 130 or by SIGTERM 143 (128 + the signal's number, as a shell reports a process the signal ended),
#: a run that stopped where it was told to (``stop_after_epoch``, status ``interrupted``) 0
EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 130}
EXIT_BAD_INPUT = 2
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Terminated(KeyboardInterrupt):
    """SIGTERM while a run starts up, raised as Ctrl-C's KeyboardInterrupt is, so that one path in
    ``run_job`` ends both (the stop policy takes both signals over once training runs)."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _exit_at_once(signum: int, frame: object) -> None:
    """Before a job starts there is nothing to save: a signal ends ffrun here with one line (not
    Python's KeyboardInterrupt traceback, and no silent exit on SIGTERM). If Hydra has already made
    a new run's folder, its results.json says ``interrupted``, as ``run_job`` would write it."""
    from ffrun.run.outputs import record_failure
    name = signal.Signals(signum).name
    folder = _new_job_folder()
    if folder is None:
        print(f"ffrun: interrupted by {name} during start-up; no run began", file=sys.stderr, flush=True)
    else:
        reason = _interrupted_reason(name, folder)
        record_failure(folder / "results.json", reason, status="interrupted")
        print(f"ffrun: {reason} ({folder})", file=sys.stderr, flush=True)
    os._exit(SIGNAL_EXIT_CODES[name])


def _interrupted_reason(signal_name: str, run_dir: Path) -> str:
    """results.json's reason for a run a signal ended outside the stop policy (start-up, wrap-up)."""
    from ffrun.run.resume import complete_checkpoints
    then = (f"resume with: ffrun resume={run_dir}" if complete_checkpoints(run_dir / "checkpoints")
            else "nothing to resume (no checkpoint yet); start the run again")
    return f"interrupted by {signal_name}; {then}"


def _new_job_folder() -> Path | None:
    """The folder of the job Hydra is starting, once it exists, unless the job resumes a run (whose
    results.json keeps its earlier status); None before Hydra has chosen or made it."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    folder = OmegaConf.select(hc, "runtime.output_dir")
    if not folder or any(str(o).startswith("resume=") for o in hc.overrides.task):
        return None
    return Path(folder) if Path(folder).is_dir() else None


def exit_code(results: dict) -> int:
    """The exit code of a run's outcome: its status's, except for an interrupted run, whose code
    says what stopped it (the first part of its reason, as ``StopPolicy`` names it)."""
    status = results["status"]
    if status != "interrupted":
        return EXIT_CODES[status]
    how = str(results.get("reason") or "").split(";")[0]
    if how.startswith("stop_after_epoch"):
        return 0
    return SIGNAL_EXIT_CODES.get(how.split(" ")[0], EXIT_CODES["interrupted"])   # "SIGTERM inside epoch 3 ..." too


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

    A new job's folder is locked for the job's lifetime (``main`` locks a resumed one before Hydra
    writes into it). Bad input (FFRunError) exits 2; any other error (a bug, a full disk) is a
    failed run, exit 1, its traceback in ffrun.log; both leave results.json ``failed`` with the
    reason, keeping every field the run had already written. Ctrl-C or SIGTERM before training
    begins leaves results.json ``interrupted``. A resume that fails before it has written its
    results.json leaves the earlier one as it was (its status and reason are the run's diagnosis)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_terminated)
    from ffrun.errors import FFRunError
    from ffrun.run import outputs

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    overrides = list(hc.overrides.task)
    resuming = bool(cfg.resume)
    if resuming:
        run_dir = Path(cfg.resume).expanduser().resolve()
    earlier = _read_bytes(run_dir / "results.json")
    lock = None if resuming else outputs.RunFolderLock(run_dir)
    owner = resuming
    results: dict = {}
    try:
        if lock is not None:
            lock.acquire()
            owner = True
        results = _train(cfg, run_dir, overrides, resuming)
        status, reason = results["status"], results.get("reason")
        code = exit_code(results)
        if code in SIGNAL_EXIT_CODES.values():
            multirun = False        # a signal that stopped training at an epoch's end ends the sweep too
    except FFRunError as exc:
        status, reason, code = "failed", str(exc), EXIT_BAD_INPUT
        _log_to_file_only(logging.ERROR, reason)
    except KeyboardInterrupt as exc:
        if threading.current_thread() is threading.main_thread():     # one signal is enough to say it
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
        name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        status, reason, code = "interrupted", _interrupted_reason(name, run_dir), SIGNAL_EXIT_CODES[name]
        multirun = False            # a signal ends the sweep too
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the run says so and the sweep goes on
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        status, reason, code = "failed", f"{type(exc).__name__}: {first}", 1
        _log_to_file_only(logging.ERROR, f"run failed: {reason}", exc_info=sys.exc_info())
    if status in ("failed", "interrupted") and not results:
        if owner and (not resuming or _read_bytes(run_dir / "results.json") != earlier):
            outputs.record_failure(run_dir / "results.json", reason, status=status)
        print(f"ffrun: {reason} ({run_dir})", file=sys.stderr)
    elif status == "failed":
        outputs.record_failure(run_dir / "results.json", reason)
        print(f"ffrun: {reason} ({run_dir})", file=sys.stderr)
    elif status == "interrupted" and code:      # a signal; a planned stop_after_epoch is no error
        print(f"ffrun: {reason} ({run_dir})", file=sys.stderr)
    if lock is not None:
        lock.release()
    if code and not multirun:
        sys.exit(code)
    best = results.get("best_val_acc") if status != "failed" else None
    return math.nan if best is None else float(best)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _train(cfg: DictConfig, run_dir: Path, overrides: list[str], resuming: bool) -> dict:
    """One job's training (a new run or a resume) with the console and logging set up for it."""
    from ffrun import _import_tensorflow_quietly
    from ffrun.experiment.plugins import load_plugins
    load_plugins(cfg.plugins)     # already loaded by main(); a sweep's worker process loads them here
    _import_tensorflow_quietly()
    from ffrun.run import loop, outputs, resume
    logging.getLogger("absl").setLevel(logging.WARNING)   # TF's checkpoint manager chatters at INFO
    # TrainMgr builds one graph per pass on purpose (each traced once; tests count the traces), which
    # TF's heuristic reports as "excessive retracing". Drop that one message, keep every other.
    tf_logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _DropRetracingWarning) for f in tf_logger.filters):
        tf_logger.addFilter(_DropRetracingWarning())
    console = outputs.make_console()
    outputs.route_logging_to(console)
    if resuming:
        saved = resume.config_for_resume(run_dir, cfg, overrides)
        return loop.train(saved, run_dir, console, resume=True, overrides=overrides)
    return loop.train(cfg, run_dir, console, overrides=overrides)


@hydra.main(config_path="pkg://ffrun.conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    return run_job(cfg)


def main() -> None:
    """The ``ffrun`` console script: overrides that would not compose, and a ``resume=`` that must
    not start, stop here with one line before Hydra makes or touches a run folder; everything else
    goes to Hydra's main, a resumed run's folder locked for this process."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_at_once)
    if sys.argv[1:] == ["--version"]:
        from ffrun import __version__
        print(f"ffrun {__version__}")
        sys.exit(0)
    # A full disk makes every log write fail; logging would print a traceback for each to stderr,
    # burying the one line that says what happened.
    logging.raiseExceptions = False
    sys.argv[1:] = protocol_name_as_choice(sys.argv[1:])
    # before the config is checked: the schema must know the plugins' protocols, datasets, losses ...
    problem = plugin_problem(sys.argv[1:]) or override_problem(sys.argv[1:])
    if problem is not None:
        print(f"ffrun: {problem}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    from ffrun.run.resume import resume_problem
    stop = resume_problem(sys.argv[1:])
    if stop is not None:
        line, code = stop
        print(f"ffrun: {line}", file=sys.stderr if code else sys.stdout)
        sys.exit(code)
    resumed = _resumed_folder(sys.argv[1:])
    if resumed is None:
        _print_notes(sys.argv[1:])
        hydra_main()
        return
    from ffrun.run.resume import FolderSnapshot
    found = FolderSnapshot(resumed)      # before the lock writes this process's pid into the folder
    _lock_resumed_run(resumed)
    _print_notes(sys.argv[1:])
    try:
        hydra_main()
    except SystemExit as exc:
        if exc.code and found.results_unchanged():   # failed before training: leave no trace
            found.restore()
        raise


def _print_notes(args: list[str]) -> None:
    for note in renamed_preset_notes(args):   # after the checks: bad input stays one line
        print(f"ffrun: {note}", file=sys.stderr)


def _resumed_folder(args: list[str]) -> Path | None:
    """The folder of ``resume=<run>`` (already checked by ``resume_problem``), or None."""
    folder = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), "null")
    return None if folder.strip() in ("", "null") else Path(folder).expanduser().resolve()


def _lock_resumed_run(run_dir: Path) -> None:
    """Lock the folder of ``resume=<run>`` before Hydra writes into it, for the rest of this process
    (the kernel drops the lock when the process ends); a folder in use is one line and exit 2."""
    from ffrun.errors import OutputError
    from ffrun.run.outputs import RunFolderLock
    try:    # never released here: its descriptor stays open until the process ends, as the lock must
        RunFolderLock(run_dir).acquire()
    except OutputError as exc:
        print(f"ffrun: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
