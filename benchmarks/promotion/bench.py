"""Promotion benchmarks, side by side with the tools a user would otherwise use.

One run generates two FreeBSD-shaped result roots (``generate.py``): A, and
B = A with 5 % of the world's files rebuilt. Then, interleaved, ``--runs``
times each:

- fresh promote of A into an empty store (``fruix native-build promote``,
  once with ``FRUIX_STORE_FSYNC=none`` and once with the default ``syncfs``)
  vs ``cp -a`` of the four trees vs ``nix-store --store DIR --add`` of them;
- re-promote of A into the store that holds it vs ``nix-hash --type sha256``
  of the four trees;
- promote of B into the store that holds A vs ``nix-store --add`` of B's
  trees into the Nix store that holds A's;
- peak RSS (``/usr/bin/time -f %M`` of the promoting process), at this
  scale and at a tenth of it, to show it does not grow with the tree.

Medians are reported with ratios. Page caches are warm for every tool alike
(the machine is shared; caches are not dropped); ``sync`` runs (untimed)
before each measurement so no tool pays for another's writeback.

Usage::

    python benchmarks/promotion/bench.py --work DIR [--scale 1.0] [--runs 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[2]))

from generate import generate  # noqa: E402

KINDS = ("world", "kernel", "headers", "bootloader")
FRUIX = Path(sys.executable).with_name("fruix")


TIME = shutil.which("time") or "/usr/bin/time"


CPU: dict[str, list[float]] = {}


def run(argv: list[str], env: dict[str, str] | None = None,
        label: str | None = None) -> tuple[float, int]:
    """Run ``argv``; returns (wall seconds, peak RSS in KiB of the command).

    With ``label``, the command's CPU time (user + system) is recorded in :data:`CPU`.

    The peak RSS comes from ``/usr/bin/time -f %M``: measured on a small
    parent, since Linux carries a process's high-water mark across ``exec``
    and this script is not small.
    """
    fd, report = tempfile.mkstemp(prefix="bench-rss-")
    os.close(fd)
    try:
        started = time.perf_counter()
        done = subprocess.run([TIME, "-o", report, "-f", "%M %U %S", *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, **(env or {})})
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]!r}")
        peak_text, user, system = Path(report).read_text().split()[-3:]
        peak = int(peak_text)
        if label:
            CPU.setdefault(label, []).append(float(user) + float(system))
    finally:
        os.unlink(report)
    return elapsed, peak


def settle() -> None:
    """Flush dirty pages first, so no tool pays for the previous one's writeback."""
    subprocess.run(["sync"], check=False)


def remove(path: Path) -> None:
    if path.exists():
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
        shutil.rmtree(path)


def promote_argv(root: Path, store: Path) -> list[str]:
    return [str(FRUIX), "native-build", "promote", str(root), "--store", str(store), "--json"]


def trees(root: Path) -> list[str]:
    return [str(root / "artifacts" / kind) for kind in KINDS]


def collect_garbage(store: Path, keep: set[str]) -> None:
    """Delete objects not in ``keep`` and pool entries no object links to (bench only)."""
    for name in os.listdir(store):
        if not name.startswith(".") and name not in keep:
            remove(store / name)
    links = store / ".links"
    for name in os.listdir(links):
        if os.lstat(links / name).st_nlink == 1:
            os.unlink(links / name)


def nix_paths(store: Path, root: Path) -> list[str]:
    out = subprocess.run(["nix-store", "--store", str(store), "--add", *trees(root)],
                         check=True, capture_output=True, text=True).stdout
    return out.split()


def measure(runs: int, label: str, results: dict[str, list[float]],
            before: Callable[[], None], argv: list[str], after: Callable[[], None],
            env: dict[str, str] | None = None, rss: dict[str, list[int]] | None = None) -> None:
    before()
    settle()
    seconds, peak = run(argv, env, label)
    after()
    results.setdefault(label, []).append(seconds)
    if rss is not None:
        rss.setdefault(label, []).append(peak)
    print(f"  {label:<34} {seconds:8.3f} s  rss {peak / 1024:7.1f} MiB", flush=True)


def tree_stats(root: Path) -> dict[str, dict[str, int]]:
    stats = {}
    for kind in KINDS:
        files = links = size = 0
        for top, _dirs, names in os.walk(root / "artifacts" / kind):
            for name in names:
                st = os.lstat(os.path.join(top, name))
                if os.path.islink(os.path.join(top, name)):
                    links += 1
                else:
                    files += 1
                    size += st.st_size
        stats[kind] = {"files": files, "symlinks": links, "bytes": size}
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work: Path = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    a, b, small = work / "root-a", work / "root-b", work / "root-small"
    for path, variant, scale in ((a, 0, args.scale), (b, 1, args.scale),
                                 (small, 0, args.scale / 10)):
        if not path.exists():
            print(f"generating {path.name} (scale {scale:g})", flush=True)
            generate(path, scale=scale, variant=variant, run_id=f"bench-{variant}")
    results: dict[str, list[float]] = {}
    rss: dict[str, list[int]] = {}
    none = {"FRUIX_STORE_FSYNC": "none"}
    held = work / "store-held"
    nix_held = work / "nix-held"
    remove(held)
    remove(nix_held)
    run(promote_argv(a, held), none)
    keep = set(os.listdir(held)) - {".links", ".locks"}
    nix_a = set(nix_paths(nix_held, a))
    scratch = work / "scratch"

    def clear() -> None:
        remove(scratch)

    for index in range(args.runs):
        print(f"run {index + 1}/{args.runs}", flush=True)
        measure(index, "fresh promote (fsync none)", results, clear, promote_argv(a, scratch),
                clear, none, rss)
        measure(index, "fresh promote (syncfs, default)", results, clear,
                promote_argv(a, scratch), clear, {"FRUIX_STORE_FSYNC": "syncfs"}, rss)
        scratch.mkdir()
        settle()
        seconds, peak = run(["cp", "-a", *trees(a), str(scratch)], label="cp -a")
        results.setdefault("cp -a", []).append(seconds)
        print(f"  {'cp -a':<34} {seconds:8.3f} s", flush=True)
        clear()
        measure(index, "nix-store --add", results, clear,
                ["nix-store", "--store", str(scratch), "--add", *trees(a)], clear, None, rss)
        measure(index, "re-promote", results, lambda: None, promote_argv(a, held),
                lambda: None, none, rss)
        measure(index, "nix-hash --type sha256", results, lambda: None,
                ["nix-hash", "--type", "sha256", *trees(a)], lambda: None, None, rss)
        measure(index, "rebuild promote (5% changed)", results, lambda: None,
                promote_argv(b, held), lambda: collect_garbage(held, keep), none, rss)

        def forget_b() -> None:
            # ``--add`` of a path that exists only hashes it and prints its store path.
            new = [p for p in nix_paths(nix_held, b) if p not in nix_a]
            if new:
                subprocess.run(["nix-store", "--store", str(nix_held), "--delete", *new],
                               check=True, capture_output=True)

        measure(index, "nix-store --add (rebuild)", results, lambda: None,
                ["nix-store", "--store", str(nix_held), "--add", *trees(b)], forget_b, None,
                rss)
        measure(index, "fresh promote, 1/10 scale", results, clear,
                promote_argv(small, scratch), clear, none, rss)
    report(args, a, results, rss)


def report(args: argparse.Namespace, root: Path, results: dict[str, list[float]],
           rss: dict[str, list[int]]) -> None:
    med = {label: statistics.median(values) for label, values in results.items()}
    peak = {label: max(values) / 1024 for label, values in rss.items()}
    ratios = {
        "fresh promote / cp -a": med["fresh promote (fsync none)"] / med["cp -a"],
        "fresh promote (syncfs) / cp -a": med["fresh promote (syncfs, default)"] / med["cp -a"],
        "fresh promote / nix-store --add":
            med["fresh promote (fsync none)"] / med["nix-store --add"],
        "fresh promote (syncfs) / nix-store --add":
            med["fresh promote (syncfs, default)"] / med["nix-store --add"],
        "re-promote / nix-hash": med["re-promote"] / med["nix-hash --type sha256"],
        "rebuild promote / nix-store --add (rebuild)":
            med["rebuild promote (5% changed)"] / med["nix-store --add (rebuild)"],
    }
    document = {
        "scale": args.scale, "runs": args.runs, "trees": tree_stats(root),
        "median_seconds": med, "all_seconds": results, "peak_rss_mib": peak, "ratios": ratios,
        "median_cpu_seconds": {label: statistics.median(v) for label, v in CPU.items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }
    print(json.dumps(document, indent=2))
    if args.json:
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
