"""The watchdog process (see watchdog): waits on its stdin for as long as the daemon lives.

Standard library only until the daemon is gone: a whole interpreter with trio
and psutil loaded held about 26 MiB to wait on a pipe; this one holds what a
bare interpreter does. The killing, with psutil, is imported once it is needed.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    # Signals for the daemon's terminal are not for us: only end-of-file ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children: dict[int, float] = {}
    for line in sys.stdin:
        sign, _, rest = line.strip().partition(" ")
        if sign.startswith("+") and rest:
            children[int(sign[1:])] = float(rest)
        elif sign.startswith("-"):
            children.pop(int(sign[1:]), None)
    if not children:
        return 0
    from orchestrator.supervisor.watchdog import kill_registered  # only now (see above)

    killed = kill_registered(children)
    if killed:
        print(f"llama-sidecar watchdog: the daemon is gone; killed {killed}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
