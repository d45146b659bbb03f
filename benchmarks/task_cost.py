"""What a Prefect task costs: the same crowd built cold with several batch sizes, CPU against the number of tasks.

Each build is ``crowdseg build`` in a subprocess (scale.py's wrapper: wall time, and CPU time of the build and of
every process it waited for, Prefect's server and the pool's workers included), into its own empty folder, with
``[build] batch_size`` set. The photos' work is the same in every build, so the CPU that grows with the number of
tasks (counted from Prefect's "Task run ... Finished" log lines) is the bookkeeping of a task: a least-squares line
through (tasks, CPU seconds) gives its cost. This is what ``build.RUNNER_BATCH`` is sized by.

    python benchmarks/task_cost.py                          # 2,000 photos, batch sizes 64, 128, 256
    python benchmarks/task_cost.py --photos 1000 --sizes 32,128
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import scale
from common import table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=2_000, help="original photos of the crowd (duplicates on top)")
    ap.add_argument("--sizes", default="64,128,256", help="batch sizes to build with")
    ap.add_argument("--data", type=Path, default=scale.DEFAULT_DATA, help="where crowds are kept (not the repo)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    crowd, info = scale.ensure_crowd(args.data, args.photos, args.seed, os.cpu_count() or 1)
    scratch = args.data / "runs" / f"task-cost-{crowd.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    logs = scratch / "logs"
    logs.mkdir(parents=True)
    code = scale.snapshot_code(scratch)
    home = scratch / "prefect-home"
    scale.warm_prefect(code, home)
    rows = []
    for size in sizes:
        name = f"batch-{size}"
        config = scale.write_config(scratch / f"{name}.toml", crowd, {"build": {"batch_size": size}})
        run = scale.build(name, config, scratch / name, code, home, logs)
        if run.rc != 0:
            raise SystemExit(f"build with batch_size {size} failed: {run.error}")
        log = (logs / f"{name}.json.log").read_text(errors="replace")
        tasks = sum("Task run '" in line and "Finished in state" in line for line in log.splitlines())
        rows.append((size, tasks, run.seconds, run.cpu_s))
        shutil.rmtree(scratch / name, ignore_errors=True)
    tasks, cpu = np.array([r[1] for r in rows], float), np.array([r[3] for r in rows], float)
    slope, intercept = np.polyfit(tasks, cpu, 1) if len(set(tasks)) > 1 else (float("nan"), float("nan"))
    print(f"Crowd `{crowd}`: {info['counts']['manifest_rows']:,} uploads, {os.cpu_count()} cores.\n")
    print(table(["batch_size", "Prefect tasks", "wall s", "CPU s"],
                [[str(s), str(t), f"{w:.1f}", f"{c:.1f}"] for s, t, w, c in rows]))
    print(f"\nCPU per task (least squares over the builds): **{slope:.2f} s**; CPU with no task at all: "
          f"{intercept:.1f} s.")


if __name__ == "__main__":
    main()
