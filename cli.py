"""What every entry point shares: signals become Interrupted while it runs, and errors become exit codes.

    sys.exit(exit_code(lambda: body(args), resume_hint))

Exit codes: 0 done, 2 bad input (one line, no traceback), 3 diverged, 128 + signal number when interrupted
(as if the signal had killed the process).
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import distributed
from config import UserError
from train import Diverged, Interrupted, signal_name


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted at once (no traceback, atomic writes leave no partial file) while
    data is read or generated and results are written; during training fit's StopFlag takes over."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def handle(signum: int, frame) -> None:
        raise Interrupted(signal_name(signum), signum)
    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def exit_code(body: Callable[[], int | None], interrupted_hint: Callable[[Interrupted], str] = lambda e: ""
              ) -> int:
    """Run `body` (which parses the command line too) with signals_interrupt; its errors become one line on
    stderr and an exit code.

    A UserError is printed by every torchrun rank that hits it (another rank may not know); a divergence or an
    interruption by rank 0 only, followed by interrupted_hint(e) when that says what to do next.
    """
    try:
        with signals_interrupt():
            return body() or 0
    except SystemExit as e:  # from argparse: --help (0), or a one-line error about a flag (2)
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # sys.exit("message"), as Python itself would
        return 1
    except UserError as e:
        prefix = "" if distributed.is_main() else f"[rank {distributed.rank()}] "
        print(f"{prefix}error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        if distributed.is_main():
            print(f"error: {e}", file=sys.stderr)
        return 3
    except (Interrupted, KeyboardInterrupt) as e:
        if not isinstance(e, Interrupted):
            e = Interrupted(signal_name(signal.SIGINT), signal.SIGINT)
        if distributed.is_main():
            hint = interrupted_hint(e)
            print(f"interrupted: {e}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 128 + int(e.signum)
    finally:
        distributed.teardown()
