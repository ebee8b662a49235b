"""Where the time of a result-root import goes, stage by stage.

Against the test kit's real sshd on loopback, on the promotion benchmark's
result root at ``--scale`` (wall seconds and host CPU seconds of each stage):

1. the SSH channel alone: ``ssh HOST tar -cf - . > /dev/null`` per cipher, and
   paramiko receiving the same stream and dropping it, with its default
   window/packet (2 MiB / 32 KiB) and with fruix's (``BULK_WINDOW`` /
   ``BULK_PACKET``);
2. channel + tar parsing (headers parsed, data skipped, nothing written);
3. extraction alone, from a tar file on disk: GNU ``tar -xf`` vs fruix's
   extractor with 0 and :data:`~fruix_core.transport.tarstream.WRITERS` writer threads;
4. the digest checks (:func:`verify_result_root`) and the final rename;
5. the whole import, with cProfile's busiest functions (all threads' time
   shows up where the main thread waits).

Usage::

    python benchmarks/ssh_import/profile_import.py [--scale 1.0] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE.parents[1] / "promotion"))

from generate import generate  # noqa: E402

from fruix_core.testkit.sshd import SshServer  # noqa: E402
from fruix_core.transport import tarstream  # noqa: E402
from fruix_core.transport.ssh import BULK_PACKET, BULK_WINDOW, connect  # noqa: E402


def cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def stage(label: str, action: Callable[[], object]) -> None:
    before, started = cpu(), time.perf_counter()
    action()
    print(f"| {label} | {time.perf_counter() - started:.2f} | {cpu() - before:.2f} |",
          flush=True)


def fresh(path: Path) -> Path:
    subprocess.run(["rm", "-rf", str(path)], check=True)
    os.sync()
    path.mkdir()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fruix-ssh-profile-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"result-root-{args.scale:g}-generated"
    if not (source / "status").exists():
        generate(source, scale=args.scale)
    dest = workdir / "profile-dest"
    archive = workdir / "profile.tar"
    subprocess.run(["tar", "-C", str(source), "-cf", str(archive), "."], check=True)
    tar_script = f"tar -C {shlex.quote(str(source))} -cf - ."

    print("| stage | wall s | host CPU s |\n|---|---:|---:|")
    with SshServer(workdir / "profile-sshd") as server:
        ssh = shlex.join(server.ssh_command())
        for cipher in ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com",
                       "aes128-ctr"):
            stage(f"channel: OpenSSH ssh -c {cipher} > /dev/null", lambda c=cipher: subprocess.run(
                f"{ssh} -c {c} {shlex.quote(tar_script)} > /dev/null", shell=True, check=True))

        def paramiko_drop(window: int, packet: int) -> None:
            with connect(server.guest()) as session:
                channel = session.transport.open_session(window_size=window,
                                                         max_packet_size=packet)
                channel.exec_command(tar_script)
                while channel.recv(64 << 20):
                    pass

        for window, packet in ((2 << 20, 32 << 10), (BULK_WINDOW, BULK_PACKET)):
            stage(f"channel: paramiko recv, window {window >> 20} MiB, packet "
                  f"{packet >> 10} KiB", lambda w=window, p=packet: paramiko_drop(w, p))

        def parse_only() -> None:
            with connect(server.guest()) as session:
                channel = session.open_channel(tar_script, bulk=True, combine_stderr=False)
                channel.shutdown_write()
                channel.settimeout(1.0)
                pump = tarstream._ChannelPump(session, channel, None)
                reader = tarstream._ForwardReader(pump.read)
                with tarfile.open(fileobj=reader, mode="r:") as tar:  # type: ignore[call-overload]
                    while tar.next() is not None:
                        tar.members.clear()
                pump.stop()
                channel.close()

        stage("channel + tar parsing (no writes)", parse_only)
        stage("extraction from a file: GNU tar -xf", lambda: subprocess.run(
            ["tar", "-xf", str(archive), "-C", str(fresh(dest))], check=True))
        for writers in (0, tarstream.WRITERS):
            def extract(n: int = writers) -> None:
                target = fresh(dest)
                with open(archive, "rb") as handle:
                    tarstream.extract_stream(handle, target, writers=n)
            stage(f"extraction from a file: fruix, {writers} writer threads", extract)
        stage("digest checks (verify_result_root)",
              lambda: tarstream.verify_result_root(dest))
        stage("rename into place", lambda: tarstream.install_tree(
            dest, workdir / "profile-installed"))
        subprocess.run(["rm", "-rf", str(workdir / "profile-installed")], check=True)
        subprocess.run(["rm", "-rf", str(dest)], check=True)
        os.sync()
        stage("whole import (fetch_tree)", lambda: tarstream.fetch_tree(
            connect(server.guest()), str(source), dest, verify=tarstream.verify_result_root,
            progress=False))
        subprocess.run(["rm", "-rf", str(dest)], check=True)
        os.sync()
        profiler = cProfile.Profile()
        profiler.enable()
        tarstream.fetch_tree(connect(server.guest()), str(source), dest,
                             verify=tarstream.verify_result_root, progress=False)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(14)
        print("\ncProfile of the whole import (main thread), by own time:\n")
        print(out.getvalue())
        subprocess.run(["rm", "-rf", str(dest), str(archive)], check=True)


if __name__ == "__main__":
    main()
