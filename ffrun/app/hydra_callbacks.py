"""Hydra callbacks. Register in conf/config.yaml under ``hydra.callbacks``."""
from __future__ import annotations

import errno
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("ffrun")


class SweepReport(Callback):
    """Writes summary.csv and summary.png into the sweep folder and prints the ranked table when a
    multirun ends. Runs in the launching process, after the launcher has collected every job."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # A report is a convenience: whatever goes wrong here, the sweep's jobs and their outputs
        # are already on disk, so a broken report must not turn the sweep into a failure.
        try:
            from ffrun.run import outputs
            from ffrun.app.summary import write_report

            sweep_dir = Path(str(config.hydra.sweep.dir))
            rows = write_report(sweep_dir, outputs.make_console())
        except Exception as exc:  # noqa: BLE001 - deliberately broad, see above
            log.warning("sweep report not written: %s: %s", type(exc).__name__, exc)
            return
        # Every job ran (a failed job does not stop the sweep), but the sweep as a whole did not
        # succeed: say so and exit non-zero, so scripts and CI notice.
        failed = [r["run"] for r in rows if r["status"] == "failed"]
        if failed:
            print(f"ffrun: {len(failed)} of {len(rows)} sweep jobs failed (runs {', '.join(failed)}); "
                  f"see {sweep_dir / 'summary.csv'}", file=sys.stderr)
            sys.exit(1)


#: bytes the writability probe writes and syncs: a 0-byte file can be made on a full disk (it needs
#: an inode, no block), so only real bytes pushed to the disk show that a run has room to start
PROBE_BYTES = 64 * 1024


def unwritable_reason(folder: Path) -> str | None:
    """Why ``folder`` could not be created and written, or None. Writes, syncs and removes a probe
    file of PROBE_BYTES in the nearest folder that exists: ``os.access`` answers yes for root even
    where nothing can be written (/proc, a read-only mount), and a full disk still takes an empty
    file. Creates no folder: Hydra resolves ``${now:...}`` again when it makes the run folder, so a
    folder made here could be a stray twin."""
    probe = folder.expanduser().absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".ffrun-probe-") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return f"{probe} has no room for a run (No space left on device)"
        return f"{probe} is not writable ({exc.strerror or type(exc).__name__})"
    return None


def existing_run_reason(config: DictConfig, sweep: bool) -> str | None:
    """Why this new run or sweep must not start in its folder, or None: the folder (a sweep's: any
    job folder below it) already holds a run, which the new one would overwrite and mix with its
    own. A resume is meant to write into its run, and is checked by ``resume_problem``."""
    from ffrun.run.outputs import first_run_below, holds_run
    if config.get("resume"):
        return None
    if sweep:
        folder = Path(str(config.hydra.sweep.dir)).expanduser().absolute()
        found = first_run_below(folder)
        if found is None:
            return None
        return (f"the sweep folder {folder} already holds a run ({found}); resume its runs one by one "
                f"(ffrun resume={found}) or choose another folder (hydra.sweep.dir=...)")
    folder = Path(str(config.hydra.run.dir)).expanduser().absolute()
    if not holds_run(folder):
        return None
    return (f"the folder {folder} already holds a run; resume it (ffrun resume={folder}) or choose "
            f"another folder (hydra.run.dir=...)")


class OutputDirCheck(Callback):
    """Stops with one line and exit code 2 when the run or sweep folder cannot be written, or
    already holds a run, before Hydra writes anything (and fails with a traceback, or overwrites)."""

    def _check(self, config: DictConfig, folder: str, sweep: bool) -> None:
        reason = existing_run_reason(config, sweep)
        if reason is not None:
            print(f"ffrun: {reason}", file=sys.stderr)
            sys.exit(2)
        reason = unwritable_reason(Path(folder))
        if reason is not None:
            print(f"ffrun: cannot write the output folder {folder}: {reason}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, str(config.hydra.run.dir), sweep=False)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, str(config.hydra.sweep.dir), sweep=True)
