"""Every entry point's exit code, `sys.exit(exit_code(lambda: body(args), hint))`: 0 done, 2 bad input (one line,
no traceback), 3 diverged, 128 + signal number when interrupted."""

import signal
import sys
import threading
from typing import Callable

import distributed
from config import UserError
from train import Diverged, Interrupted, signal_name


def raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signal_name(signum), signum)


def exit_code(body: Callable[[], int | None], hint: Callable[[Interrupted], str] = lambda e: "") -> int:
    """Run `body` with SIGINT/SIGTERM raising Interrupted (fit's StopFlag takes over while training); a
    UserError is printed by every rank, a divergence or an interruption (with hint(e)) by rank 0 only."""
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        return body() or 0
    except SystemExit as e:  # argparse: --help (0) or a one-line error (2)
        return e.code or 0
    except UserError as e:
        print(("" if distributed.is_main() else f"[rank {distributed.rank()}] ") + f"error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        if distributed.is_main():
            print(f"error: {e}", file=sys.stderr)
        return 3
    except (Interrupted, KeyboardInterrupt) as e:
        e = e if isinstance(e, Interrupted) else Interrupted(signal_name(signal.SIGINT), signal.SIGINT)
        if distributed.is_main():
            print(f"interrupted: {e}" + (f"; {hint(e)}" if hint(e) else ""), file=sys.stderr)
        return 128 + int(e.signum)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        distributed.teardown()
