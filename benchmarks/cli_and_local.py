#!/usr/bin/env python3
"""Benchmarks of issue "executor framework": CLI start-up and the local executor's overhead.

Side by side, in one run, medians:

* ``fruix --help`` and ``fruix executors list`` vs
  ``python3 -c "import pluggy, stevedore, structlog"`` (target: list <= 1.5x);
* ``fruix native-build run --no-promote`` on the sample base vs the same five
  make commands run by hand in the same sanitised environment (target <= 1.1x).

Usage: python benchmarks/cli_and_local.py [--runs N] [--builds N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fruix_core.environment import sanitised_environment
from fruix_core.profile import PHASES, BuildPaths, phase_command
from fruix_core.sample import sample_base_path


def timed(argv: list[str], **kw) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.perf_counter() - start


def by_hand(source: Path, build_root: Path, jobs: int) -> float:
    """The five phases as an operator would type them, no fruix involved."""
    start = time.perf_counter()
    paths = BuildPaths(str(build_root))
    env = sanitised_environment()
    for phase in PHASES:
        argv, extra = phase_command(phase, make="bmake", jobs=jobs, paths=paths,
                                    kernconf="GENERIC")
        subprocess.run(argv, cwd=source, env={**env, **extra}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def in_process(work: Path) -> float:
    """The same run through :func:`run_build`, without the interpreter's start-up."""
    from fruix_core.config import load_config
    from fruix_core.runner import run_build

    cwd = os.getcwd()
    os.chdir(work)
    try:
        start = time.perf_counter()
        run_build(load_config(work / "fruix.toml"))
        return time.perf_counter() - start
    finally:
        os.chdir(cwd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="start-up runs (>= 10)")
    parser.add_argument("--builds", type=int, default=7, help="build runs (>= 5)")
    args = parser.parse_args()
    from fruix_core.logconfig import configure_logging

    configure_logging("console", "warning")  # as the CLI does by default
    fruix = [sys.executable, "-m", "fruix_core.cli.main"]
    baseline = [sys.executable, "-c", "import pluggy, stevedore, structlog"]
    samples: dict[str, list[float]] = {"imports": [], "help": [], "list": []}
    for _ in range(args.runs):  # interleaved, so noise hits every command alike
        samples["imports"].append(timed(baseline))
        samples["help"].append(timed([*fruix, "--help"]))
        samples["list"].append(timed([*fruix, "executors", "list"]))
    med = {k: statistics.median(v) for k, v in samples.items()}

    jobs = os.cpu_count() or 1
    builds: dict[str, list[float]] = {"by-hand": [], "fruix": [], "in-process": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "fruix.toml").write_text(
            f'[build]\njobs = {jobs}\npromote = false\nsource = "{sample_base_path()}"\n')
        for i in range(args.builds):
            root = work / f"hand-{i}"
            builds["by-hand"].append(by_hand(sample_base_path(), root, jobs))
            shutil.rmtree(root)
            builds["fruix"].append(timed([*fruix, "native-build", "run"], cwd=work))
            shutil.rmtree(work / ".fruix")
            builds["in-process"].append(in_process(work))
            shutil.rmtree(work / ".fruix")
    bmed = {k: statistics.median(v) for k, v in builds.items()}

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {platform.platform()}")
    print(f"start-up, median of {args.runs}:")
    print(f"  python -c 'import pluggy, stevedore, structlog'  {med['imports'] * 1000:7.1f} ms")
    print(f"  fruix --help                                      {med['help'] * 1000:7.1f} ms"
          f"  ratio {med['help'] / med['imports']:.2f}x")
    print(f"  fruix executors list                              {med['list'] * 1000:7.1f} ms"
          f"  ratio {med['list'] / med['imports']:.2f}x  (target <= 1.5x)")
    print(f"local build of the sample base (-j{jobs}), median of {args.builds}:")
    print(f"  five make commands by hand                        {bmed['by-hand'] * 1000:7.1f} ms")
    print(f"  fruix native-build run --no-promote               {bmed['fruix'] * 1000:7.1f} ms"
          f"  ratio {bmed['fruix'] / bmed['by-hand']:.2f}x  (target <= 1.1x)")
    print(f"  overhead per run                                  "
          f"{(bmed['fruix'] - bmed['by-hand']) * 1000:7.1f} ms")
    print(f"  run_build() in process (no interpreter start-up)  {bmed['in-process'] * 1000:7.1f} ms"
          f"  ratio {bmed['in-process'] / bmed['by-hand']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
