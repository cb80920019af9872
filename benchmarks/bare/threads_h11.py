"""Bare h11 on OS threads: a thread per connection, a plain blocking recv / next_event /
sendall loop.

The reference for stackbench's `threads-h11` server.

    python benchmarks/bare/threads_h11.py --port 8080
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import NoReturn

from _bare import announce, listen, port_from_argv, set_nodelay
from _h11 import serve_connection

NAME = "threads_h11"


def _exit(*_: object) -> NoReturn:
    # Raised in the main thread: it interrupts the blocking accept (no polling timeout, so the
    # server has no idle work at all). Connection threads are daemons.
    sys.exit(0)


def main() -> None:
    listener = listen(port_from_argv(NAME))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit)
    announce(NAME, listener)
    with listener:
        while True:
            sock, _ = listener.accept()
            set_nodelay(sock)
            threading.Thread(target=serve_connection, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()
