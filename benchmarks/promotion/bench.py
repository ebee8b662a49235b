"""Promotion benchmarks: paired, side by side with the tools a user would otherwise use.

The machine this runs on may be shared, so absolute times drift by large
factors between minutes. Each comparison is therefore a *pair*: our command
and the other tool's, run back to back (their order alternating from one
round to the next), and the figure reported is the median of the per-pair
ratios, with their spread (min–max). Absolute medians are reported too, with
the CPU time (user + system) of each command, which drifts less.

Trees (``generate.py``): A, B = A with 5 % of the world's files rebuilt
(unchanged files keep their modification time, so ``rsync``'s quick check can
link them), A without the ``/rescue`` hard-link farm, and A at a tenth of the
scale (to show peak RSS does not grow). Pairs, each round:

- fresh promote of A into an empty store (``FRUIX_STORE_FSYNC=none``) vs
  ``cp -a`` of the four trees, and vs ``nix-store --store DIR --add``;
- the same for the tree without hard-link groups vs ``cp -a``;
- re-promote of A into the store holding it (stat cache warm) vs
  ``nix-hash --type sha256`` of the four trees; and with the stat cache
  removed first (every byte hashed again);
- promote of B into the store holding A vs ``nix-store --add`` of B into the
  Nix store holding A, and vs ``rsync -a --link-dest=<copy of A>`` of B;
- ``fruix store verify`` of A's four objects vs ``nix-hash`` of them, the
  same of the whole store (A's objects, its bundle and the content pool),
  and ``store verify --fast`` (right after the full one recorded what it
  hashed).

With ``--old-engine DIR`` (a directory holding another version's
``fruix_core`` package, e.g. ``git archive REV fruix_core | tar -x -C DIR``),
each round also pairs this engine with that one, each run with its own
``PYTHONPATH``, on the same trees (issue 12: store v2 must not be more than
5 % slower than the engine before it): fresh promote of A, re-promote of A
into the store holding it, and promote of B into the store holding A (each
engine its own store), the last also with ``FRUIX_STORE_POOL_CHECK=content``
(``rebuild-content``: the opt-in check that reads every pool entry linked).

Floors, measured in the same rounds on A: ``cat`` of every byte (every name,
as the NAR archives each), ``sha256sum`` of every byte (one hash of
everything), ``tar c | tar x``, ``cp -a``, and ``cp -a --attributes-only``
(the same tree of empty files: the cost of creating it). ``--profile`` adds a
``cProfile`` of one fresh promote and one rebuild promote, in process.

``--engines-only`` runs the engine pairs alone, ``--engine-pairs`` a subset of
them (e.g. ``fresh,rebuild``).

Usage::

    python benchmarks/promotion/bench.py --work DIR [--scale 1.0] [--rounds 5] [--json OUT]
        [--old-engine DIR [--engines-only] [--engine-pairs LIST]] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
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
NONE = {"FRUIX_STORE_FSYNC": "none"}
#: The pairs of this engine with another (``--old-engine``), as ``--engine-pairs`` names them.
ENGINE_PAIRS = ("fresh", "re-promote", "rebuild", "rebuild-content")


class Sample:
    """One timed command: wall seconds, CPU seconds (user + system), peak RSS (KiB)."""

    __slots__ = ("wall", "cpu", "rss")

    def __init__(self, wall: float, cpu: float, rss: int) -> None:
        self.wall, self.cpu, self.rss = wall, cpu, rss


def run(argv: list[str], env: dict[str, str] | None = None, shell: bool = False) -> Sample:
    """Run ``argv`` under ``/usr/bin/time`` (peak RSS measured on a small parent)."""
    fd, report = tempfile.mkstemp(prefix="bench-rss-")
    os.close(fd)
    command = ["sh", "-c", argv[0]] if shell else argv
    try:
        started = time.perf_counter()
        done = subprocess.run([TIME, "-o", report, "-f", "%M %U %S", *command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, **(env or {})})
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]!r}")
        peak, user, system = Path(report).read_text().split()[-3:]
    finally:
        os.unlink(report)
    return Sample(elapsed, float(user) + float(system), int(peak))


def remove(path: Path) -> None:
    """Delete a tree; only directories are made writable (store files share inodes)."""
    if os.path.lexists(path):
        subprocess.run(["find", str(path), "-type", "d", "-exec", "chmod", "u+w", "{}", "+"],
                       check=False)
        shutil.rmtree(path)


def trees(root: Path) -> list[str]:
    return [str(root / "artifacts" / kind) for kind in KINDS]


def promote_argv(root: Path, store: Path) -> list[str]:
    return [str(FRUIX), "native-build", "promote", str(root), "--store", str(store), "--json"]


def old_promote_argv(root: Path, store: Path) -> list[str]:
    """The same command run from another engine's source (``PYTHONPATH`` first on the path).

    ``-P``: the current directory (this checkout, when run from it) must not
    come before ``PYTHONPATH``, or this engine would run in the other's place.
    """
    return [sys.executable, "-P", "-m", "fruix_core.cli.main", "native-build", "promote", str(root),
            "--store", str(store), "--json"]


def promote_json(root: Path, store: Path, old: Path | None = None) -> dict:
    argv = old_promote_argv(root, store) if old else promote_argv(root, store)
    env = {**os.environ, **NONE, **({"PYTHONPATH": str(old)} if old else {})}
    out = subprocess.run(argv, check=True, capture_output=True, env=env).stdout
    return json.loads(out)


class Step:
    """One side of a pair: prepare (untimed), the command, clean up (untimed)."""

    def __init__(self, label: str, argv: list[str], *, env: dict[str, str] | None = None,
                 before: Callable[[], None] = lambda: None,
                 after: Callable[[], None] = lambda: None, shell: bool = False) -> None:
        self.label, self.argv, self.env = label, argv, env
        self.before, self.after, self.shell = before, after, shell

    def measure(self) -> Sample:
        self.before()
        subprocess.run(["sync"], check=False)  # nobody pays for another's writeback
        sample = run(self.argv, self.env, self.shell)
        self.after()
        return sample


class Results:
    def __init__(self, only: tuple[str, ...] = ()) -> None:
        self.samples: dict[str, list[Sample]] = {}
        self.ratios: dict[str, list[float]] = {}
        #: measure only the pairs whose name holds one of these (empty: every pair)
        self.only = only

    def wanted(self, name: str) -> bool:
        return not self.only or any(word in name for word in self.only)

    def add(self, label: str, sample: Sample) -> None:
        self.samples.setdefault(label, []).append(sample)
        print(f"    {label:<44} {sample.wall:8.3f} s  cpu {sample.cpu:7.2f} s  "
              f"rss {sample.rss / 1024:6.1f} MiB", flush=True)

    def pair(self, name: str, ours: Step, theirs: Step, flip: bool) -> None:
        if not self.wanted(name):
            return
        first, second = (theirs, ours) if flip else (ours, theirs)
        a = first.measure()
        b = second.measure()
        mine, other = (b, a) if flip else (a, b)
        self.add(ours.label, mine)
        self.add(theirs.label, other)
        self.ratios.setdefault(name, []).append(mine.wall / other.wall)
        print(f"  {name:<46} ratio {mine.wall / other.wall:6.2f}", flush=True)

    def summary(self) -> dict:
        return {
            "ratios": {name: {"median": statistics.median(values), "min": min(values),
                              "max": max(values), "pairs": values}
                       for name, values in self.ratios.items()},
            "median_seconds": {label: statistics.median(s.wall for s in samples)
                               for label, samples in self.samples.items()},
            "median_cpu_seconds": {label: statistics.median(s.cpu for s in samples)
                                   for label, samples in self.samples.items()},
            "peak_rss_mib": {label: max(s.rss for s in samples) / 1024
                             for label, samples in self.samples.items()},
        }


def records(store: Path) -> list[str]:
    """The stat-cache records of ``store``."""
    try:
        return os.listdir(store / ".cache")
    except FileNotFoundError:
        return []


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


def _first_line(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "?"


def machine(work: Path) -> dict[str, object]:
    model = "?"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True,
                        text=True).stdout.strip()
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "file_system": fs, "python": platform.python_version(),
            "nix": _first_line(["nix-store", "--version"]),
            "rsync": _first_line(["rsync", "--version"]),
            "cp": _first_line(["cp", "--version"]),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                / 2**30, 1)}


def profile(root: Path, store: Path, previous: Path | None) -> dict[str, object]:
    """cProfile of one promote in process: time by category and the top functions."""
    from fruix_core.promotion.store import promote
    if previous is not None:
        promote(previous, store, fsync="none")
        remove(store / ".cache")
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    promote(root, store, fsync="none")
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    categories = {"system calls": 0.0, "hashing": 0.0, "python": 0.0}
    top = []
    for (filename, _line, name), (_cc, calls, own, _cum, _callers) in \
            stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~" and "hashlib" in name:
            categories["hashing"] += own
        elif filename == "~" and "posix." in name:
            categories["system calls"] += own
        else:
            categories["python"] += own
        top.append((own, calls, f"{os.path.basename(filename)}:{name}"))
    top.sort(reverse=True)
    return {"wall_seconds": wall, "categories_seconds": categories,
            "top": [{"own_seconds": own, "calls": calls, "function": where}
                    for own, calls, where in top[:15]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--old-engine", type=Path, metavar="DIR",
                        help="directory holding another version's fruix_core to pair with")
    parser.add_argument("--engines-only", action="store_true",
                        help="with --old-engine: only the engine pairs (no tools, no floors)")
    parser.add_argument("--only", default="", metavar="LIST",
                        help="comma-separated words: measure only the pairs whose name holds "
                             "one of them (e.g. 'store verify'), and no floors")
    parser.add_argument("--engine-pairs", default=",".join(ENGINE_PAIRS), metavar="LIST",
                        help="the engine pairs to run, comma-separated, of "
                             f"{', '.join(ENGINE_PAIRS)} (default: all)")
    args = parser.parse_args()
    if args.engines_only and not args.old_engine:
        parser.error("--engines-only needs --old-engine")
    wanted = set(args.engine_pairs.split(","))
    if not wanted or not wanted <= set(ENGINE_PAIRS):
        parser.error(f"--engine-pairs: choose among {', '.join(ENGINE_PAIRS)}")
    work: Path = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    a, b = work / "root-a", work / "root-b"
    flat, small = work / "root-flat", work / "root-small"
    for path, variant, scale, links in ((a, 0, args.scale, True), (b, 1, args.scale, True),
                                        (flat, 0, args.scale, False),
                                        (small, 0, args.scale / 10, True)):
        subset = args.only and "hard links" not in args.only
        if (args.engines_only or subset) and path in (flat, small):
            continue  # only the tool pairs of their own and the floors use them
        if not path.exists():
            print(f"generating {path.name} (scale {scale:g})", flush=True)
            generate(path, scale=scale, variant=variant, run_id=f"bench-{path.name}",
                     hard_links=links)
    # Trees written less than the stat cache's racy margin ago are not cached yet.
    time.sleep(2.5)
    load_before = os.getloadavg()
    held, nix_held, scratch = work / "store-held", work / "nix-held", work / "scratch"
    previous = work / "previous-a"
    for path in (held, nix_held, scratch, previous):
        remove(path)
    objects: list[str] = []
    keep: set[str] = set()
    cached_a: set[str] = set()
    nix_a: set[str] = set()
    if not args.engines_only:
        outcome = promote_json(a, held)
        objects = [outcome["artifacts"][kind] for kind in KINDS]
        keep = set(os.listdir(held))
        promote_json(a, held)  # the stat cache is recorded once the trees are settled
        cached_a = set(records(held))
        if not cached_a:
            raise SystemExit("the stat cache recorded nothing for A: are its trees still changing?")
        subprocess.run(["nix-store", "--store", str(nix_held), "--add", *trees(a)], check=True,
                       capture_output=True)
        nix_a = set(os.listdir(nix_held / "nix/store"))
        previous.mkdir()
        subprocess.run(["cp", "-a", *trees(a), str(previous)], check=True)
    old: Path | None = args.old_engine.absolute() if args.old_engine else None
    old_env = {**NONE, "PYTHONPATH": str(old)} if old else {}
    old_held, new_held = work / "store-held-old", work / "store-held-new"
    if old is not None:
        if not (old / "fruix_core").is_dir():
            raise SystemExit(f"{old}: no fruix_core package there")
        for path in (old_held, new_held):
            remove(path)
        promote_json(a, old_held, old)
        promote_json(a, new_held)
        promote_json(a, new_held)  # its stat cache, as for the store holding A above
    held_names = {path: set(os.listdir(path)) for path in (old_held, new_held)
                  if path.exists()}
    held_records = {path: set(records(path)) for path in held_names}

    def forget_engine_b(store: Path) -> Callable[[], None]:
        def forget() -> None:
            keep_here = held_names[store]
            for name in os.listdir(store):
                if name not in keep_here:
                    remove(store / name)
            for name in os.listdir(store / ".links"):
                if os.lstat(store / ".links" / name).st_nlink == 1:
                    os.unlink(store / ".links" / name)
            for name in records(store):
                if name not in held_records[store]:
                    os.unlink(store / ".cache" / name)
        return forget

    def clear() -> None:
        remove(scratch)

    def scratch_dir() -> None:
        remove(scratch)
        scratch.mkdir()

    def forget_b() -> None:
        # Back to "the store holds A only" (bench bookkeeping, not timed).
        for name in os.listdir(held):
            if name not in keep:
                remove(held / name)
        # B's stat-cache records would let later rounds skip B's unchanged artifacts.
        for name in records(held):
            if name not in cached_a:
                os.unlink(held / ".cache" / name)
        links = held / ".links"
        for name in os.listdir(links):
            if os.lstat(links / name).st_nlink == 1:
                os.unlink(links / name)
        new = [f"/nix/store/{n}" for n in os.listdir(nix_held / "nix/store")
               if n not in nix_a and not n.startswith(".")]
        if new:
            subprocess.run(["nix-store", "--store", str(nix_held), "--delete", *new],
                           check=True, capture_output=True)

    def drop_cache() -> None:
        for name in records(held):
            os.unlink(held / ".cache" / name)

    def rebuild_tail() -> None:
        forget_b()
        remove(scratch)

    def engine_pairs(results: Results, flip: bool) -> None:
        if old is None:
            return
        if "fresh" in wanted:
            results.pair("engine: fresh promote, new / old",
                         Step("fresh promote (new engine)", promote_argv(a, scratch), env=NONE,
                              before=clear, after=clear),
                         Step("fresh promote (old engine)", old_promote_argv(a, scratch),
                              env=old_env, before=clear, after=clear), flip)
        if "re-promote" in wanted:
            results.pair("engine: re-promote, new / old",
                         Step("re-promote (new engine)", promote_argv(a, new_held), env=NONE),
                         Step("re-promote (old engine)", old_promote_argv(a, old_held),
                              env=old_env), flip)
        old_rebuild = Step("rebuild promote (old engine)", old_promote_argv(b, old_held),
                           env=old_env, after=forget_engine_b(old_held))
        if "rebuild" in wanted:
            results.pair("engine: rebuild promote, new / old",
                         Step("rebuild promote (new engine)", promote_argv(b, new_held),
                              env=NONE, after=forget_engine_b(new_held)), old_rebuild, flip)
        if "rebuild-content" in wanted:
            # The opt-in pool check that reads every pool entry it links (not the default).
            results.pair("engine: rebuild promote with FRUIX_STORE_POOL_CHECK=content, new / old",
                         Step("rebuild promote, content check (new engine)",
                              promote_argv(b, new_held),
                              env={**NONE, "FRUIX_STORE_POOL_CHECK": "content"},
                              after=forget_engine_b(new_held)), old_rebuild, flip)

    results = Results(tuple(w for w in args.only.split(",") if w))
    cp_a = Step("cp -a", ["cp", "-a", *trees(a), str(scratch)], before=scratch_dir,
                after=clear)
    for index in range(args.rounds):
        flip = index % 2 == 1
        print(f"round {index + 1}/{args.rounds} ({'theirs first' if flip else 'ours first'})",
              flush=True)
        fresh = Step("fresh promote", promote_argv(a, scratch), env=NONE, before=clear,
                     after=clear)
        if args.engines_only:
            engine_pairs(results, flip)
            continue
        results.pair("fresh promote / cp -a", fresh, cp_a, flip)
        results.pair("fresh promote / nix-store --add", fresh,
                     Step("nix-store --add", ["nix-store", "--store", str(scratch), "--add",
                                              *trees(a)], before=clear, after=clear), flip)
        results.pair("fresh promote, no hard links / cp -a",
                     Step("fresh promote, no hard links", promote_argv(flat, scratch),
                          env=NONE, before=clear, after=clear),
                     Step("cp -a, no hard links", ["cp", "-a", *trees(flat), str(scratch)],
                          before=scratch_dir, after=clear), flip)
        nix_hash = Step("nix-hash --type sha256", ["nix-hash", "--type", "sha256", *trees(a)])
        results.pair("re-promote (stat cache) / nix-hash",
                     Step("re-promote (stat cache)", promote_argv(a, held), env=NONE),
                     nix_hash, flip)
        results.pair("re-promote (no stat cache) / nix-hash",
                     Step("re-promote (no stat cache)", promote_argv(a, held), env=NONE,
                          before=drop_cache), nix_hash, flip)
        rebuild = Step("rebuild promote (5% changed)", promote_argv(b, held), env=NONE,
                       after=forget_b)
        results.pair("rebuild promote / nix-store --add (rebuild)", rebuild,
                     Step("nix-store --add (rebuild)", ["nix-store", "--store", str(nix_held),
                                                        "--add", *trees(b)], after=forget_b),
                     flip)
        results.pair("rebuild promote / rsync --link-dest", rebuild,
                     Step("rsync -a --link-dest (rebuild)",
                          ["rsync", "-a", f"--link-dest={previous}", *trees(b),
                           str(scratch)], before=scratch_dir, after=rebuild_tail), flip)
        results.pair("store verify / nix-hash",
                     Step("store verify (full)", [str(FRUIX), "store", "verify", "--store",
                                                  str(held), *objects]),
                     Step("nix-hash of the objects", ["nix-hash", "--type", "sha256",
                                                      *objects]), flip)
        results.pair("store verify, whole store / nix-hash",
                     Step("store verify (whole store, pool included)",
                          [str(FRUIX), "store", "verify", "--store", str(held)]),
                     Step("nix-hash of the objects", ["nix-hash", "--type", "sha256",
                                                      *objects]), flip)
        # After the full verify above recorded what it hashed (A's objects are settled).
        results.pair("store verify --fast / nix-hash",
                     Step("store verify --fast", [str(FRUIX), "store", "verify", "--fast",
                                                  "--store", str(held), *objects]),
                     Step("nix-hash of the objects", ["nix-hash", "--type", "sha256",
                                                      *objects]), flip)
        engine_pairs(results, flip)
        if results.only:  # a subset of the pairs: no floors
            continue
        print("  floors", flush=True)
        every = f"find {' '.join(trees(a))} -type f -print0 | xargs -0 "
        results.add("floor: cat every byte", Step("", [every + "cat > /dev/null"],
                                                  shell=True).measure())
        results.add("floor: sha256 every byte once", Step("", [
            every + "cat | sha256sum > /dev/null"], shell=True).measure())
        results.add("floor: tar c | tar x", Step("", [
            f"tar -C {a / 'artifacts'} -cf - {' '.join(KINDS)} | tar -C {scratch} -xf -"],
            shell=True, before=scratch_dir, after=clear).measure())
        results.add("floor: cp -a", cp_a.measure())
        results.add("floor: cp -a --attributes-only (empty files)", Step(
            "", ["cp", "-a", "--attributes-only", *trees(a), str(scratch)],
            before=scratch_dir, after=clear).measure())
        results.add("fresh promote, 1/10 scale", Step(
            "", promote_argv(small, scratch), env=NONE, before=clear, after=clear).measure())
    load_after = os.getloadavg()
    document: dict[str, object] = {
        "scale": args.scale, "rounds": args.rounds, "trees": tree_stats(a),
        "old_engine": str(old) if old else None,
        "machine": {**machine(work), "load_average_before": load_before,
                    "load_average_after": load_after},
        **results.summary(),
    }
    if args.profile:
        remove(scratch)
        document["profile_fresh"] = profile(a, scratch, None)
        remove(scratch)
        document["profile_rebuild"] = profile(b, scratch, a)
        remove(scratch)
    print(json.dumps(document, indent=2))
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
