"""Peak resident memory of every 4 x 2000 preset on full MNIST, each in its own process.

Each preset (every conf/experiment/ preset whose network is 4 layers of 2000 units, found by composing
it) runs for two epochs through the installed ``ffrun`` script (two: presets that draw negatives
afresh hold two epochs' sets at the switch), with every evaluation it makes; the figure is the
run's own ``peak_memory_mb`` in results.json (Linux VmHWM of the process). Time does not matter
here, so it may run at low priority beside other work (``nice -n 19``).

Run:  FFRUN_DATA_DIR=../shared/data python benchmarks/peak_memory.py --out peak_memory.json
      ... --presets paper_sup,rmwkwok_r2_unsup_random --limit-mb 2000
Exit status 1 when a preset exceeds ``--limit-mb`` (the project's budget: 2 GB) or fails.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

import ffrun.conf  # noqa: F401  (registers the config schema and resolvers)
from ffrun.app.overrides import RENAMED_PRESETS
from ffrun.experiment.schema import typed

CONF = Path(ffrun.conf.__file__).parent


def presets_4x2000() -> list[str]:
    """The presets whose (generated) network is 4 layers of 2000 units."""
    found = []
    with initialize_config_module(config_module="ffrun.conf", version_base="1.3"):
        for path in sorted((CONF / "experiment").glob("*.yaml")):
            if path.stem.startswith(tuple(RENAMED_PRESETS)):   # an old name of another preset
                continue
            spec = typed(compose("config", overrides=[f"experiment={path.stem}"]))
            if spec.model.layers is None and spec.model.num_layers == 4 and spec.model.units == 2000:
                found.append(path.stem)
    return found


def ffrun_script() -> str:
    """The ``ffrun`` installed beside this interpreter (the environment being measured), else PATH's:
    a venv's python run by its full path, without the venv activated, has no ffrun on PATH."""
    beside = Path(sys.executable).parent / "ffrun"
    return str(beside) if beside.exists() else (shutil.which("ffrun") or "ffrun")


def measure(preset: str, epochs: int, data_dir: str | None, overrides: list[str] = ()) -> dict:
    """Run ``preset`` for ``epochs`` epochs in a fresh process; its status, peak MB and seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [ffrun_script(), f"experiment={preset}", f"epochs={epochs}", "readout_epochs=0",
               "checkpoint.every=0", "tensorboard.enabled=false", "progress=false", *overrides,
               f"hydra.run.dir={run_dir}"]
        env = None
        if data_dir:
            import os
            env = {**os.environ, "FFRUN_DATA_DIR": data_dir}
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.time() - t0
        try:
            results = json.loads((run_dir / "results.json").read_text())
        except (OSError, ValueError):
            results = {"status": "failed", "reason": (proc.stderr.strip().splitlines() or ["no results.json"])[-1]}
    return {"preset": preset, "command": " ".join(cmd[:-1]), "status": results.get("status"),
            "reason": results.get("reason"), "peak_memory_mb": results.get("peak_memory_mb"),
            "epochs": epochs, "wall_seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (tests: data=digits units=16)")
    p.add_argument("--presets", default="", help="comma-separated presets (default: every 4 x 2000 preset)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-mb", type=float, default=2000.0)
    p.add_argument("--data-dir", default=None, help="FFRUN_DATA_DIR for the runs (default: inherited)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    presets = [s for s in args.presets.split(",") if s] or presets_4x2000()
    rows, worst = [], 0
    for preset in presets:
        row = measure(preset, args.epochs, args.data_dir, args.overrides)
        over = row["status"] != "completed" or (row["peak_memory_mb"] or 0) > args.limit_mb
        worst = max(worst, int(over))
        rows.append(row)
        mark = "OVER" if over else "ok"
        print(f"{preset:28s} {row['status']:10s} peak {row['peak_memory_mb']} MB  ({row['wall_seconds']} s)  {mark}"
              + (f"  {row['reason']}" if row["status"] != "completed" else ""), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"limit_mb": args.limit_mb, "rows": rows}, indent=2))
    return worst


if __name__ == "__main__":
    sys.exit(main())
