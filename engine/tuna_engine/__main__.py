"""python -m tuna_engine <train|merge|generate> --plan <plan.json>

Runs one command of a plan written by TypeScript (src/engine/protocol.ts). Writes one JSON event per stdout
line (start, step, eval, checkpoint, done, error, log) and a human log on stderr. Every failure is an `error`
event with a stable code and exits non-zero; SIGINT/SIGTERM stop at once without saving ("INTERRUPTED").
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from types import FrameType

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


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tuna_engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["train", "merge", "generate"])
    parser.add_argument("--plan", required=True, help="path to plan.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
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
        log(f"error [{e.code}] {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""))
        emit(e.event())
        return 1
    except MemoryError_ as e:  # outside the training loop (which names its phase itself): loading, merging
        emit(
            {
                "event": "error",
                "code": "OOM",
                "message": f"out of memory: {str(e).splitlines()[0]}",
                "hint": "use a smaller model or dtype bfloat16, free the GPU of other processes, or use qlora",
            }
        )
        return 1
    except Interrupted as e:
        emit(
            {
                "event": "error",
                "code": "INTERRUPTED",
                "message": f"stopped by {e}; nothing new was saved",
                "hint": "resume_from the run directory to continue from its last checkpoint",
            }
        )
        return 128 + e.signum
    except Exception as e:  # a bug or an unforeseen failure: still one error event, never a silent exit
        log(traceback.format_exc())
        emit(
            {
                "event": "error",
                "code": "INTERNAL",
                "message": f"{type(e).__name__}: {e}",
                "hint": "this is a bug in the engine; the traceback is on stderr",
            }
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
