"""Resuming a run: its saved config, what this invocation may change (how far to go), and the
checks that must pass before anything is written into the folder."""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ffrun.core.feature_cache import HIDDEN_FOLDER
from ffrun.errors import CheckpointError, ConfigError, FFRunError
from ffrun.run.outputs import RunFolderLock, read_json, read_metrics

log = logging.getLogger("ffrun")

#: what this invocation may set on a resume; anything else is the run's saved config
RESUME_KEYS = ("resume", "stop_after_epoch", "progress", "epochs", "readout_epochs")


def load_run_config(run_dir: Path) -> DictConfig:
    """The composed config a run saved in ``<run>/.hydra/config.yaml``."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an ffrun run folder (no .hydra/config.yaml)")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - YAML and OmegaConf raise many kinds; all mean a damaged file
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{path} is unreadable ({type(exc).__name__}: {first})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} does not hold a config (a mapping of keys), but a {type(cfg).__name__}")
    return cfg


def plan_changes(saved: DictConfig, epochs: int | None, readout_epochs: int | None) -> dict[str, int]:
    """The plan keys (``epochs``, ``readout_epochs``) that a resume asking for these values changes,
    or ConfigError when the change would alter an epoch already run.

    Extending is exact only when it changes no epoch already run: more FF epochs need a constant
    learning rate (a cool-down is planned over the stage) and no readout-only stage after them; a
    longer readout-only stage needs a constant rate or no readout-only epochs before (each stage
    runs its own cool-down)."""
    constant = saved.get("lr_schedule", "constant") == "constant"
    old_readout = int(saved.get("readout_epochs") or 0)
    changed: dict[str, int] = {}
    if epochs is not None and epochs != int(saved.epochs):
        if not constant or old_readout:
            raise ConfigError("epochs can be changed on resume only for runs with lr_schedule=constant and "
                              "readout_epochs=0 (otherwise the schedule depends on the planned length)")
        changed["epochs"] = epochs
    if readout_epochs is not None and readout_epochs != old_readout:
        if len(saved.schedule) < 2:
            raise ConfigError(f"mode {saved.mode.name} has no readout-only stage; readout_epochs does nothing here")
        if readout_epochs < old_readout or (old_readout and not constant):
            raise ConfigError("readout_epochs can only grow on resume, and only from 0 unless "
                              "lr_schedule=constant (its cool-down is planned over the stage)")
        changed["readout_epochs"] = readout_epochs
    return changed


def config_for_resume(run_dir: Path, cfg: DictConfig, task_overrides: list[str]) -> DictConfig:
    """The saved config of ``run_dir`` with what belongs to this invocation: how far to go
    (``stop_after_epoch``; ``epochs`` and ``readout_epochs`` to extend a run, see ``plan_changes``),
    and how to show it (``progress``).

    An accepted extension is written to the run's ``.hydra/config.yaml`` (the plan as first
    composed stays in ``.hydra/config.planned.yaml``), so that the folder says what it holds and a
    later plain ``resume=`` finishes the extended plan."""
    saved = load_run_config(run_dir)
    saved.stop_after_epoch, saved.progress = cfg.stop_after_epoch, cfg.progress
    given = {o.split("=", 1)[0] for o in task_overrides}
    changed = plan_changes(saved, *(int(cfg[k]) if k in given else None for k in ("epochs", "readout_epochs")))
    for key, value in changed.items():
        saved[key] = value
    if changed:
        _record_extension(run_dir, changed)
    ignored = [o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") not in RESUME_KEYS]
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


def complete_checkpoints(folder: Path) -> list[int]:
    """The epochs of the checkpoints in ``folder`` whose files are all there (``ckpt-N.index`` and
    every ``ckpt-N.data-i-of-K`` shard), oldest first."""
    epochs = []
    for index in folder.glob("ckpt-*.index"):
        number = index.name.removeprefix("ckpt-").removesuffix(".index")
        if not number.isdigit():
            continue
        shards = list(folder.glob(f"ckpt-{number}.data-*-of-*"))
        total = re.search(r"-of-(\d+)$", shards[0].name) if shards else None
        if total and len(shards) == int(total.group(1)):
            epochs.append(int(number))
    return sorted(epochs)


def checkpoint_to_resume(run_dir: Path) -> tuple[int, str | None]:
    """The epoch of the checkpoint a resume of ``run_dir`` starts from, and a line to log when it is
    not the one the index names (the index is missing: the newest complete checkpoint). Reads files
    only (no TensorFlow); CheckpointError when there is nothing sound to resume from."""
    folder = run_dir / "checkpoints"
    complete = complete_checkpoints(folder) if folder.is_dir() else []
    index = folder / "checkpoint"
    newest = f"ckpt-{complete[-1]}" if complete else None
    if index.is_file():
        named = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', index.read_text(errors="replace"), re.MULTILINE)
        if named is None:
            fix = f"delete it to resume from {newest}, the newest complete checkpoint" if newest else \
                "no complete checkpoint is left beside it"
            raise CheckpointError(f"cannot resume {run_dir}: its checkpoint index {index} is empty or "
                                  f"unreadable; {fix}")
        name = Path(named.group(1)).name
        epoch = name.removeprefix("ckpt-")
        if not epoch.isdigit() or int(epoch) not in complete:
            raise CheckpointError(f"cannot resume {run_dir}: its checkpoint index names {name}, whose files are "
                                  f"missing or incomplete in {folder}")
        return int(epoch), None
    if newest is None:
        raise CheckpointError(f"cannot resume {run_dir}: it has no checkpoint yet (the run ended before its "
                              f"first); start it again")
    return complete[-1], f"{index} is missing: resuming from {newest}, the newest complete checkpoint"


def _check_history(run_dir: Path, epoch: int) -> None:
    """metrics.csv must hold every epoch up to the checkpoint: a resume rewrites it from those rows,
    so a missing or shortened file would lose the run's history for good."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise CheckpointError(f"cannot resume {run_dir}: its metrics.csv is missing, and resuming would lose "
                              f"the history of epochs 1-{epoch}; put the file back or start the run again")
    try:
        rows = [r for r in read_metrics(path) if r.get("epoch", 0) <= epoch]
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot resume {run_dir}: its metrics.csv is unreadable ({exc})") from None
    if len(rows) < epoch:
        raise CheckpointError(f"cannot resume {run_dir}: its metrics.csv holds {len(rows)} of the {epoch} epochs "
                              f"before the checkpoint; resuming would lose the history of the others")


def _given_int(given: dict[str, str], key: str) -> int | None:
    try:
        return int(given[key]) if key in given else None
    except ValueError:
        return None


def resume_problem(args: list[str]) -> tuple[str, int] | None:
    """(one line, exit code) when ``resume=<folder>`` must not reach Hydra, which would write
    .hydra_resume/ and ffrun.log into the folder before anything else checks it. Every check that
    needs no TensorFlow runs here, so that a refused resume leaves the folder byte-identical: the
    value is empty, the folder is not a run of ffrun or is in use by another process, its saved
    config is damaged or invalid, the change of plan would alter epochs already run or shrink a
    completed run, the checkpoint or the history is missing (all exit 2); or the run is already
    complete and nothing asks to extend it (exit 0)."""
    given = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    if "resume" not in given:
        return None
    folder = given["resume"].strip()
    if folder in ("", "''", '""'):
        return "resume= needs a run folder (ffrun resume=outputs/<date>/<time>)", 2
    if folder == "null":
        return None
    run_dir = Path(folder).expanduser().resolve()
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        what = "does not exist" if not run_dir.exists() else "is not an ffrun run folder (no .hydra/config.yaml)"
        return f"cannot resume {run_dir}: it {what}", 2
    busy = RunFolderLock(run_dir).busy()
    if busy is not None:
        return busy, 2
    try:
        return _problem_of(run_dir, given)
    except FFRunError as exc:
        line = str(exc)
        return (line if line.startswith("cannot resume") else f"cannot resume {run_dir}: {line}"), 2


def _problem_of(run_dir: Path, given: dict[str, str]) -> tuple[str, int] | None:
    from ffrun.experiment.schema import typed
    saved = load_run_config(run_dir)
    try:
        spec = typed(saved)
    except ConfigError as exc:
        raise ConfigError(f"its saved config {run_dir / '.hydra' / 'config.yaml'} is not valid: {exc}") from None
    if spec.mode.name == "bp":
        raise ConfigError("mode=bp runs cannot be resumed (they keep no checkpoint); start it again")
    epochs, readout_epochs = _given_int(given, "epochs"), _given_int(given, "readout_epochs")
    results = read_json(run_dir / "results.json")
    completed = results.get("status") == "completed"
    if completed and epochs is not None and epochs < int(saved.epochs):
        raise ConfigError(f"it completed {saved.epochs} epochs and epochs={epochs} is fewer; nothing was changed. "
                          f"To train further: ffrun resume={run_dir} epochs=<more than {saved.epochs}>")
    changed = plan_changes(saved, epochs, readout_epochs)
    if completed and not changed:
        return (f"{run_dir} is already complete ({results.get('epochs')} epochs); nothing was changed. "
                f"To train further: ffrun resume={run_dir} epochs=<more>; to evaluate again: ffrun-eval {run_dir}"), 0
    epoch, _ = checkpoint_to_resume(run_dir)
    if "epochs" in changed and changed["epochs"] < epoch:
        raise ConfigError(f"epochs={changed['epochs']} is fewer than the {epoch} epochs its checkpoint holds")
    _check_history(run_dir, epoch)
    return None


class FolderSnapshot:
    """A run folder's files as a resume found them, to put back if the resume fails before it has
    written its results.json: Hydra writes ``.hydra_resume/``, appends to ``ffrun.log`` and an
    accepted ``epochs=`` extension rewrites ``.hydra/config.yaml`` before TensorFlow can tell that a
    checkpoint is corrupt or does not fit the network. Every file's bytes are kept except the
    checkpoints' (large, and never written before an epoch has trained) and the feature files a
    killed run left (gigabytes, never read again): new ones are removed."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: dict[Path, bytes | None] = {}
        for path in folder.rglob("*"):
            if path.is_file():
                large = path.relative_to(folder).parts[0] in ("checkpoints", HIDDEN_FOLDER)
                self.files[path] = None if large else path.read_bytes()
        self.dirs = {p for p in folder.rglob("*") if p.is_dir()}

    def results_unchanged(self) -> bool:
        path = self.folder / "results.json"
        try:
            return path.read_bytes() == self.files.get(path)
        except OSError:
            return path not in self.files

    def restore(self) -> None:
        """Remove what is new, put back what changed; the folder is then byte-identical."""
        for path in sorted(self.folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_file() and path not in self.files:
                path.unlink()
            elif path.is_dir() and path not in self.dirs:
                shutil.rmtree(path, ignore_errors=True)
        for path, data in self.files.items():
            if data is not None and (not path.exists() or path.read_bytes() != data):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
