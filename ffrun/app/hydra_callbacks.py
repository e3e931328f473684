"""Hydra callbacks. Register in conf/config.yaml under ``hydra.callbacks``."""
from __future__ import annotations

import logging
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


def unwritable_reason(folder: Path) -> str | None:
    """Why ``folder`` could not be created and written, or None. Writes and removes a probe file in
    the nearest folder that exists: ``os.access`` answers yes for root even where nothing can be
    written (/proc, a read-only mount). Creates no folder: Hydra resolves ``${now:...}`` again when
    it makes the run folder, so a folder made here could be a stray twin."""
    probe = folder.expanduser().absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".ffrun-probe-"):
            pass
    except OSError as exc:
        return f"{probe} is not writable ({exc.strerror or type(exc).__name__})"
    return None


class OutputDirCheck(Callback):
    """Stops with one line and exit code 2 when the run or sweep folder cannot be written, before
    Hydra tries (and fails with a traceback)."""

    def _check(self, folder: str) -> None:
        reason = unwritable_reason(Path(folder))
        if reason is not None:
            print(f"ffrun: cannot write the output folder {folder}: {reason}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(str(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(str(config.hydra.sweep.dir))
