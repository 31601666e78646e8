"""Command line: ``python -m meta_train <command> ...``."""
from __future__ import annotations

import argparse
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


def _add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None,
                   help="data folder in torchvision layout (default: $L2O_DATA)")


def _requested_processes(flag: int | None) -> int:
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


def _watch_parent() -> None:
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


def _relaunch(n: int, argv: list[str]) -> int:
    """Run this command in ``n`` processes through torch.distributed.run (gloo on CPU, NCCL on GPUs).

    torchrun runs in a session of its own (a Ctrl-C in the terminal reaches only this launcher, which forwards it
    once, see :func:`_supervise`) and gets SIGTERM from the kernel if this launcher dies, even by SIGKILL (Linux); its
    workers do the same with torchrun (:func:`_watch_parent`). So no worker outlives the launcher, and none is lost:
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


def _exit_status(exc: BaseException) -> int | None:
    """The exit status of an error whose message says everything (printed without a traceback): 2 for a config
    error, 1 for a meta-training run that cannot start or go on; None for anything else (a bug: traceback)."""
    config, train = sys.modules.get("meta_train.config"), sys.modules.get("meta_train.train")
    if config is not None and isinstance(exc, config.ConfigError):
        return 2
    if train is not None and isinstance(exc, train.TrainingError):
        return 1
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m meta_train", description="Learned optimizers on neural graphs.")
    sub = ap.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="graph of the CIFAR-10 task model + a brief Adam run on real data")
    demo.add_argument("--task", default="cifar10-conv")
    demo.add_argument("--steps", type=int, default=200)
    demo.add_argument("--lr", type=float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    _add_data_root(demo)

    tr = sub.add_parser("train", help="meta-train a learned optimizer (resumable; accelerate launch for several processes)")
    tr.add_argument("--config", default=None, help="TOML file (see meta_train/configs/)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value, e.g. --set meta.lr=1e-4 (repeatable)")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in run.out_dir")
    tr.add_argument("--overwrite", action="store_true",
                    help="delete the run already in run.out_dir (checkpoints, metrics) and start a new one; without "
                         "--resume or --overwrite, run.out_dir must be empty")
    tr.add_argument("--max-minutes", type=float, default=None, help="wall-time budget; checkpoints and stops")
    tr.add_argument("--out-dir", default=None, help="shortcut for --set run.out_dir=...")
    tr.add_argument("--num-processes", type=int, default=None,
                    help="start N processes (gloo on CPU); same as accelerate launch --num_processes N")
    _add_data_root(tr)

    ev = sub.add_parser("evaluate", help="train a task with several optimizers over several seeds; table + figures")
    ev.add_argument("--task", default="cifar10-conv")
    ev.add_argument("--optimizers", nargs="+", required=True,
                    help="adam | adamw | sgdm (tuned on validation), adam:lr=1e-3 (fixed), or checkpoint .pt files")
    ev.add_argument("--steps", type=int, default=1000)
    ev.add_argument("--seeds", type=int, default=5)
    ev.add_argument("--eval-every", type=int, default=100)
    ev.add_argument("--tune-steps", type=int, default=None, help="horizon of the tuning runs (default: --steps)")
    ev.add_argument("--out", default="results/eval")
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--resume", action="store_true",
                    help="keep optimizers already finished in --out (same task, steps, seeds and checkpoint file)")
    _add_data_root(ev)

    ex = sub.add_parser("export", help="write a learned-optimizer checkpoint from a run's newest training state")
    ex.add_argument("--run", required=True, help="run.out_dir of the meta-training run")
    ex.add_argument("--out", required=True, help="checkpoint file to write")

    mj = sub.add_parser("main-job", help="make run: brief meta-training, then CIFAR-10 evaluation (table + PNG)")
    mj.add_argument("--minutes", type=float, default=10.0, help="meta-training wall-time budget")
    mj.add_argument("--steps", type=int, default=500)
    mj.add_argument("--seeds", type=int, default=1)
    mj.add_argument("--config", default="quick.toml", help="a file in meta_train/configs/")
    mj.add_argument("--out", default="runs/main")
    mj.add_argument("--fresh", action="store_true", help="start meta-training over instead of resuming")
    _add_data_root(mj)

    rp = sub.add_parser("report", help="collect evaluation summaries into results/transfer.json and transfer.md")
    rp.add_argument("--evals", nargs="+", required=True, help="folders written by `evaluate --out`")
    rp.add_argument("--out", default="results")

    from .weight_space import add_parser as _add_weight_space

    _add_weight_space(sub)

    sub.add_parser("results", add_help=False,
                   help="the full transfer results (make results); same options as python -m meta_train.transfer")
    sub.add_parser("step-stats", add_help=False,
                   help="a learned optimizer's update size and direction vs Adam's along a run")

    raw_argv = list(sys.argv[1:] if argv is None else argv)
    if raw_argv[:1] == ["results"]:  # forwarded whole: these have their own parsers
        from .transfer import main as transfer_main

        return transfer_main(raw_argv[1:])
    if raw_argv[:1] == ["step-stats"]:
        from .step_stats import main as step_stats_main

        return step_stats_main(raw_argv[1:])
    args = ap.parse_args(raw_argv)
    from l2o.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    if args.command == "train":
        if args.resume and args.overwrite:
            tr.error("--resume continues the run in run.out_dir and --overwrite deletes it: pass only one")
        overrides = list(args.overrides)
        if args.max_minutes is not None:
            overrides.append(f"run.max_minutes={args.max_minutes}")
        if args.out_dir:
            overrides.append(f"run.out_dir='{args.out_dir}'")
        n = _requested_processes(args.num_processes)
        if n > 1:
            from .config import ConfigError, load_config

            try:  # a config error is reported once, here, not by every worker
                load_config(args.config, overrides)
            except (ConfigError, FileNotFoundError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(2)
            sys.exit(_relaunch(n, raw_argv))
        if os.environ.get("TORCHELASTIC_RUN_ID"):  # a worker of torch.distributed.run
            _watch_parent()
    if getattr(args, "data_root", None):
        os.environ["L2O_DATA"] = args.data_root
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.task, args.steps, args.lr, args.seed, args.data_root)
        elif args.command == "train":
            from .config import load_config
            from .train import train

            train(load_config(args.config, overrides), resume=args.resume, overwrite=args.overwrite)
        elif args.command == "evaluate":
            from .evaluate import evaluate

            evaluate(args.task, args.optimizers, args.steps, args.seeds, Path(args.out), args.eval_every,
                     args.tune_steps, args.device, resume=args.resume)
        elif args.command == "main-job":
            from .main_job import main_job

            if args.fresh:  # start meta-training over: the previous run's files go (train refuses to mix them)
                from .train import clear_run

                clear_run(Path(args.out) / "meta")
            main_job(Path(args.out), args.minutes, args.steps, args.seeds, args.config, resume=not args.fresh)
        elif args.command == "report":
            from .report import write

            write([Path(d) for d in args.evals], Path(args.out))
        elif args.command == "weight-space":
            from .weight_space import weight_space_main

            weight_space_main(args)
        elif args.command == "export":
            from .train import export_run

            print(export_run(Path(args.run), Path(args.out)))
    except FileNotFoundError as exc:  # missing data: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, RuntimeError) as exc:
        status = _exit_status(exc)
        if status is None:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(status)
