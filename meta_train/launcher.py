"""Multi-process meta-training on one machine: ``python -m meta_train train --num-processes N`` (or ``accelerate launch
--cpu --num_processes N``) runs the command in N workers under torch.distributed.run, and this launcher makes sure no
worker outlives it or is lost without a checkpoint.

Standard library only: the launcher process never imports torch or Accelerate (the workers do).
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WORKER_GRACE_S = 120.0  # after torchrun is gone, how long its workers may take to checkpoint before SIGKILL


def requested_processes(flag: int | None) -> int:
    """How many processes the user asked for, when this process is not yet part of a distributed run.

    ``--num-processes N`` on our CLI, or ``accelerate launch --cpu --num_processes N``: Accelerate's CPU launcher
    starts a single process whatever N says (huggingface/accelerate#2741), so we read N from the launcher's
    command line (Linux /proc) and start the N workers ourselves.
    """
    if os.environ.get("WORLD_SIZE"):
        return 1
    if flag:
        return flag
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true":
        try:
            words = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            return 1
        for i, w in enumerate(words):
            for name in ("--num_processes", "--num-processes"):
                if w == name and i + 1 < len(words):
                    return int(words[i + 1])
                if w.startswith(name + "="):
                    return int(w.split("=", 1)[1])
    return 1


def _libc():
    """The C library, where prctl(PR_SET_PDEATHSIG) exists (Linux); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl  # noqa: B018 - present in every Linux libc, but a static or odd build may lack it
    except (OSError, AttributeError):
        return None
    return libc


def _die_with_parent(libc, parent: int) -> bool:
    """Have the kernel send this process SIGTERM when its parent dies (Linux prctl PR_SET_PDEATHSIG).

    SIGTERM, not SIGKILL: a meta-training process then finishes its outer step, checkpoints and exits. If the parent
    is already gone (it died before the prctl), SIGTERM is sent at once. Returns False where unsupported.
    """
    if libc is None or libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def watch_parent() -> None:
    """In a worker of a distributed launch: stop (SIGTERM to itself: checkpoint, exit) when its parent dies.

    torch.distributed.run starts each worker in a session of its own, so nothing else reaches it once the launcher
    and torchrun are gone (SIGKILL, OOM killer): without this it would train on, orphaned. Linux: prctl; elsewhere a
    thread polling the parent's pid.
    """
    parent = os.getppid()
    if _die_with_parent(_libc(), parent):
        return

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """``(parent pid, start time, state)`` of a process from /proc, or None when it is gone (or there is no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    rest = text[text.rindex(")") + 2:].split()  # after "pid (command name) ", which may hold spaces
    return int(rest[1]), int(rest[19]), rest[0]


def _children(pid: int) -> dict[int, int]:
    """``{child pid: start time}`` of a process (Linux /proc; empty elsewhere)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.isdigit():
            st = _proc_stat(int(name))
            if st is not None and st[0] == pid:
                out[int(name)] = st[1]
    return out


def _alive(pid: int, started: int) -> bool:
    """The process ``pid`` that started at ``started`` still runs (not a reused pid, not a zombie)."""
    st = _proc_stat(pid)
    return st is not None and st[1] == started and st[2] != "Z"


def _supervise(proc: subprocess.Popen) -> int:
    """Wait for torchrun and its workers, forwarding SIGTERM / SIGINT (and SIGHUP, as SIGTERM) so they checkpoint.

    torchrun starts every worker in a session of its own and, when it gets a signal itself, SIGKILLs them after 30 s
    (cutting a slow checkpoint short). So the first signal goes to the workers directly: they finish their outer step,
    checkpoint and exit, and torchrun exits after them. A second signal goes to torchrun too. Returns torchrun's exit
    status once torchrun *and* every worker seen are gone: the launcher never exits while a worker still runs.
    """
    workers: dict[int, int] = {}  # pid -> start time
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        workers.update(_children(proc.pid))
        live = [pid for pid, started in workers.items() if _alive(pid, started)]
        targets = live if live and len(received) == 1 else live + [proc.pid]
        for pid in targets:
            try:
                os.kill(pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
            except ProcessLookupError:
                pass
        print(f"launcher: signal {signum} forwarded to {'the workers' if live else 'torchrun'}"
              f"{' and torchrun' if live and proc.pid in targets else ''}", file=sys.stderr)

    handled = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # under nohup, a hang-up stays ignored
        handled.append(signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    try:
        while True:
            try:
                rc = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                workers.update(_children(proc.pid))
        # torchrun is gone. Workers it did not stop itself (it was killed) got SIGTERM from their parent-death
        # signal and are checkpointing: wait for them, and end them if they hang.
        deadline = time.monotonic() + WORKER_GRACE_S
        while live := [pid for pid, started in workers.items() if _alive(pid, started)]:
            if time.monotonic() > deadline:
                print(f"launcher: workers {live} still running {WORKER_GRACE_S:.0f} s after torchrun exited; killing "
                      f"them (resume from the last complete checkpoint)", file=sys.stderr)
                for pid in live:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                rc = rc or 1
                break
            time.sleep(0.2)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return rc if rc >= 0 else 128 - rc


def relaunch(n: int, argv: list[str]) -> int:
    """Run this command in ``n`` processes through torch.distributed.run (gloo on CPU, NCCL on GPUs).

    torchrun runs in a session of its own (a Ctrl-C in the terminal reaches only this launcher, which forwards it
    once, see :func:`_supervise`) and gets SIGTERM from the kernel if this launcher dies, even by SIGKILL (Linux); its
    workers do the same with torchrun (:func:`watch_parent`). So no worker outlives the launcher, and none is lost:
    every stop goes through the workers' SIGTERM handler, which checkpoints.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [a for i, a in enumerate(argv) if a != "--num-processes" and (i == 0 or argv[i - 1] != "--num-processes")]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "meta_train", *argv]
    libc, launcher = _libc(), os.getpid()
    if libc is not None and os.environ.get("ACCELERATE_USE_CPU"):  # started by accelerate launch: die with it too
        _die_with_parent(libc, os.getppid())

    def child_setup():  # in torchrun's process, before exec: SIGTERM when this launcher dies
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != launcher:
            os._exit(1)  # the launcher is already gone: start nothing

    print(f"launching {n} processes: {' '.join(cmd[2:])}", file=sys.stderr)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=child_setup if libc is not None else None)
    return _supervise(proc)
