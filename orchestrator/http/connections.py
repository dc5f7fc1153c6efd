"""Cutting client connections that a graceful shutdown cannot end on its own.

hypercorn writes to a client socket inside a shielded cancel scope, with no
timeout. A client that stops reading (a paused ``orchestrator logs -f | less``,
a frozen tab) fills the socket's buffers, and the handler writing to it can
then be neither cancelled nor timed out: the daemon would wait for it forever,
even after a second SIGTERM. Shutting the socket down makes that write fail at
once, so hypercorn ends the connection like any other.

The daemon's sockets are found through psutil by their local port. On Windows
psutil gives no file descriptors, so nothing is cut there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket

import psutil

log = logging.getLogger("orchestrator.http.connections")


def sever_connections(port: int) -> int:
    """Shut down every accepted TCP connection of this process on local ``port``; how many."""
    try:
        connections = psutil.Process().net_connections(kind="tcp")
    except psutil.Error as error:
        log.warning("cannot list this process's connections: %s", error)
        return 0
    severed = 0
    for connection in connections:
        if connection.fd < 0 or not connection.raddr or connection.laddr.port != port:
            continue  # no descriptor (Windows), the listening socket, or not ours
        try:
            duplicate = os.dup(connection.fd)
        except OSError:
            continue  # closed meanwhile
        with socket.socket(fileno=duplicate) as handle, contextlib.suppress(OSError):
            handle.shutdown(socket.SHUT_RDWR)  # shared with the original: its stuck write fails now
            severed += 1
    return severed
