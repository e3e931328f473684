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
    overrides = list(hc.overrides.task)
    try:
        if cfg.resume:
            run_dir = Path(cfg.resume).expanduser().resolve()
            saved = config_for_resume(run_dir, cfg, overrides)
            results = runner.train(saved, run_dir, console, resume=True, overrides=overrides)
        else:
            results = runner.train(cfg, run_dir, console, overrides=overrides)
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
        reporting.record_failure(run_dir / "results.json", reason)
        print(f"ffrun: {reason} ({run_dir})", file=sys.stderr)
    if code and not multirun:
        sys.exit(code)
    best = results.get("best_val_acc") if status != "failed" else None
    return math.nan if best is None else float(best)


register_resolvers()


def _job_overrides(args: list[str]) -> list[list[str]]:
    """Override lists that cover the jobs of ``args`` for checking: the first value of every sweep,
    then each other value of each sweep in turn (one composition per value, not per job: a 4 x 4
    grid is checked with 7, not 16)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parser = OverridesParser.create()
    first: list[str] = []
    others: list[tuple[int, list[str]]] = []
    for i, arg in enumerate(args):
        override = parser.parse_overrides([arg])[0]
        if not override.is_sweep_override():
            first.append(arg)
            continue
        key = override.get_key_element()
        value = override.value()
        if hasattr(value, "start"):          # interval(a, b): Optuna draws inside it
            first.append(f"{key}={value.start}")
            continue
        values = list(override.sweep_string_iterator())
        first.append(f"{key}={values[0]}")
        # every value is checked (numbers too: a NaN or a zero batch size must not wait for its job)
        others.append((i, [f"{key}={v}" for v in values[1:]]))
    jobs = [first]
    for i, variants in others:
        jobs += [first[:i] + [v] + first[i + 1:] for v in variants]
    return jobs


def _config_keys(overrides: list[str]) -> list[str]:
    """Every dotted key of the config composed with ``overrides`` (Hydra's own section left out)."""
    from hydra import compose, initialize_config_module
    with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    keys: list[str] = []

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for key in node.keys():
                name = f"{prefix}{key}"
                keys.append(name)
                walk(node._get_node(key), name + ".")
    walk(cfg, "")
    return keys


_PLUGIN_EXTRAS = {"hydra/sweeper/optuna": "optuna", "hydra/launcher/joblib": "sweep",
                  "hydra/launcher/submitit_local": "sweep", "hydra/launcher/submitit_slurm": "sweep"}


def override_problem(args: list[str]) -> str | None:
    """One line saying why Hydra would refuse these command-line arguments, or None.

    Hydra's own report of a bad override spans five to twenty lines (the struct error, its config
    search path, every option of the group); the user needs the key, the nearest valid spelling and
    how to add a key on purpose. Flags other than ``-m`` are left to Hydra."""
    from hydra.errors import OverrideParseException
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return None
    overrides = [a for a in args if not a.startswith("-")]
    try:
        jobs = _job_overrides(overrides)
    except OverrideParseException as exc:
        bad = next((o for o in overrides if _unparsable(o)), " ".join(overrides))
        return f"cannot parse the override {bad!r}: {str(exc).splitlines()[0]}"
    for single in jobs:
        problem = _compose_problem(single)
        if problem is not None:
            return problem
    return None


def _compose_problem(single: list[str]) -> str | None:
    """One line saying why composing the overrides of one job fails, or None."""
    import difflib

    from hydra import compose, initialize_config_module
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError
    from omegaconf.errors import ValidationError

    from ffrun.errors import FFRunError
    from ffrun.experiment.schema import typed
    try:
        with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
            cfg = compose("config", overrides=single, return_hydra_config=True)
        typed(cfg)      # ranges and cross-key rules: the same check every run makes at its start
    except FFRunError as exc:
        return str(exc)
    except MissingConfigException as exc:
        group, _, choice = str(exc.missing_cfg_file or "").rpartition("/")
        options = list(exc.options or [])
        near = difflib.get_close_matches(choice, options, n=1)
        hint = f"did you mean {group}={near[0]}? " if near else ""
        extra = _PLUGIN_EXTRAS.get(f"{group}/{choice}")
        if extra:   # a Hydra plugin's config group appears only once the plugin is installed
            hint = f"its Hydra plugin is not installed (pip install 'ffrun[{extra}]'); "
        return f"no config {choice!r} in group {group!r}; {hint}choices: {', '.join(options)}"
    except Exception as exc:  # noqa: BLE001 - Hydra raises several types; each gets one line
        cause = exc.__cause__
        if isinstance(cause, ValidationError) and not isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            # the schema refused a value: "splitting=bogus: Invalid value 'bogus', expected one of [...]"
            key = str(getattr(cause, "full_key", "") or "")
            given = next((o for o in single if o.lstrip("+~").split("=", 1)[0] == key), key)
            return f"{given}: {str(cause).splitlines()[0]}"
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
            key = str(cause.full_key)
            given = next((o for o in single if o.lstrip("+~").split("=", 1)[0] == key), key)
            known = _keys_without(single, given)
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]}?" if near else ""
            value = given.split("=", 1)[1] if "=" in given else "..."
            return f"unknown config key {key!r}{hint} (to add a new key on purpose: +{key}={value})"
        return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return None


def _unparsable(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    try:
        OverridesParser.create().parse_overrides([override])
    except Exception:  # noqa: BLE001
        return True
    return False


def _keys_without(overrides: list[str], bad: str) -> list[str]:
    """The config's keys, composed without the offending override (or, failing that, without any)."""
    for attempt in ([o for o in overrides if o != bad and not o.startswith("hydra")], []):
        try:
            return _config_keys(attempt)
        except Exception:  # noqa: BLE001 - a second bad override: fall back to the defaults
            continue
    return []


@hydra.main(config_path="pkg://ffrun.conf", config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    return run_job(cfg)


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
    from ffrun.reporting import read_json
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
    stop = resume_problem(sys.argv[1:])
    if stop is not None:
        line, code = stop
        print(f"ffrun: {line}", file=sys.stderr if code else sys.stdout)
        sys.exit(code)
    hydra_main()


if __name__ == "__main__":
    main()
