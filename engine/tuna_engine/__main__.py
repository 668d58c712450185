"""python -m tuna_engine <train|merge|generate> --plan <plan.json>

Runs one command of a plan written by TypeScript (src/engine/protocol.ts). Writes one JSON event per stdout
line (start, step, eval, checkpoint, done, error, log) and a human log on stderr. Every failure is an `error`
event with a stable code and exits non-zero; SIGINT/SIGTERM stop at once without saving ("INTERRUPTED"), except
while an error is being reported: that report finishes first.

Under torchrun (several processes, docs/distributed.md) only rank 0 writes events; every rank also writes its
error event to <run_dir>/errors/rank-<r>.json, and rank 0, when stopped by torchrun because another rank failed,
reports that rank's error instead of INTERRUPTED.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from .errors import EngineError

try:
    from torch import OutOfMemoryError as MemoryError_
except ImportError:  # torch < 2.5
    from torch.cuda import OutOfMemoryError as MemoryError_  # type: ignore[no-redef]
from .protocol import emit, load_merge_plan, load_train_plan, log


class Interrupted(BaseException):
    """Raised from the signal handler; BaseException so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Set once an error is being reported: a stop signal then waits for the report (torchrun stops every rank as soon
# as one fails, so rank 0's SIGTERM often lands while it is reporting its own side of the failure).
_reporting = False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _reporting:
        return
    raise Interrupted(signum)


def _hold_signals() -> None:
    global _reporting
    _reporting = True


def _world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _run_dir(plan_path: str) -> str | None:
    try:
        return str(json.loads(Path(plan_path).read_text())["run_dir"])
    except Exception:  # an unreadable plan has its own error event already
        return None


def _other_rank_errors(run_dir: str, rank: int, wait_s: float) -> list[dict[str, Any]]:
    """Error events other ranks wrote (distributed.py), waiting up to `wait_s` for a first one to land."""
    d = Path(run_dir) / "errors"
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for f in sorted(d.glob("rank-*.json")) if d.is_dir() else []:
            if f.name == f"rank-{rank}.json":
                continue
            try:
                found.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def _fail(event: dict[str, Any], plan_path: str, rank: int, world: int) -> None:
    """Report an error event: stdout on rank 0 (emit), plus the per-rank error file under torchrun.

    When several ranks fail, the cause is the earliest error that is not INTERRUPTED (a rank that loses its
    peer fails later, in a collective, or is stopped by torchrun), so rank 0 reports that one."""
    _hold_signals()  # torchrun stops the other ranks (SIGTERM) as soon as one exits; finish this report first
    if world > 1:
        run_dir = _run_dir(plan_path)
        event = {
            **event,
            "message": f"rank {rank}: {event.get('message', '')}",
            "rank": rank,
            "time": time.time(),
        }
        if run_dir is not None:
            from .distributed import Dist

            Dist(rank=rank, world=world, local_rank=0, strategy="fsdp").write_error(run_dir, event)
            if rank == 0 and event.get("code") in ("INTERRUPTED", "INTERNAL"):
                candidates = [event, *_other_rank_errors(run_dir, rank, wait_s=2.0)]
                causes = [e for e in candidates if e.get("code") != "INTERRUPTED"]
                if causes:
                    event = min(causes, key=lambda e: e.get("time", math.inf))
        event = {k: v for k, v in event.items() if k not in ("rank", "time")}
    emit(event)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuna_engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["train", "merge", "generate"])
    parser.add_argument("--plan", required=True, help="path to plan.json")
    args = parser.parse_args(argv)
    global _reporting
    _reporting = False
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    rank, world = _world()
    try:
        return _command(args, rank, world)
    except Interrupted as e:
        # A stop signal that landed after another error was raised but before its report began (a few bytecodes):
        # still one error event, never a silent exit.
        return _interrupted(e, args.plan, rank, world)


def _interrupted(e: Interrupted, plan_path: str, rank: int, world: int) -> int:
    _fail(
        {
            "event": "error",
            "code": "INTERRUPTED",
            "message": f"stopped by {e}; nothing new was saved",
            "hint": "resume_from the run directory to continue from its last checkpoint",
        },
        plan_path,
        rank,
        world,
    )
    return 128 + e.signum


def _command(args: argparse.Namespace, rank: int, world: int) -> int:
    """The command, and its failure reported as one error event (each handler holds stop signals first)."""
    try:
        if args.command == "train":
            from .train import train

            train(load_train_plan(args.plan))
        elif args.command == "generate":
            from .generate import serve
            from .protocol import load_generate_plan

            serve(load_generate_plan(args.plan))
        else:
            from .merge import merge

            merge(load_merge_plan(args.plan))
        return 0
    except EngineError as e:
        _hold_signals()
        log(f"error [{e.code}] {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""))
        _fail(e.event(), args.plan, rank, world)
        return 1
    except MemoryError_ as e:  # outside the training loop (which names its phase itself): loading, merging
        _hold_signals()
        _fail(
            {
                "event": "error",
                "code": "OOM",
                "message": f"out of memory: {str(e).splitlines()[0]}",
                "hint": "use a smaller model or dtype bfloat16, free the GPU of other processes, or use qlora",
            },
            args.plan,
            rank,
            world,
        )
        return 1
    except Interrupted as e:
        return _interrupted(e, args.plan, rank, world)
    except Exception as e:  # a bug or an unforeseen failure: still one error event, never a silent exit
        _hold_signals()
        log(traceback.format_exc())
        _fail(
            {
                "event": "error",
                "code": "INTERNAL",
                "message": f"{type(e).__name__}: {e}",
                "hint": "this is a bug in the engine; the traceback is on stderr",
            },
            args.plan,
            rank,
            world,
        )
        return 1


def _exit(code: int) -> None:
    """Exit with `code`. Under torchrun, without the interpreter's finalization: there a rank whose command finished
    (its "done" or error event emitted, the process group destroyed) sometimes died of SIGABRT ("terminate called
    without an active exception": gloo's worker threads, whose process group FSDP's device mesh still referenced,
    torn down with the interpreter) — ~1 run in 25 of the 2-process CPU resume test, turning a finished run into a
    failed one. Everything the engine writes is closed by then; only the standard streams need flushing."""
    if _world()[1] > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
