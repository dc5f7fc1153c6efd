"""systemd's notify protocol, spoken by the daemon itself: datagrams to ``$NOTIFY_SOCKET``.

``READY=1`` once the port is bound and serving, ``STATUS=`` with the pool's
one-line summary as it changes, ``RELOADING=1`` with ``MONOTONIC_USEC`` then
``READY=1`` around a reload, ``STOPPING=1`` at shutdown, and ``WATCHDOG=1`` at
half of ``$WATCHDOG_USEC``, sent from the trio loop itself: a loop that is
wedged stops pinging, and systemd restarts the daemon (``WatchdogSec=``).
Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

log = logging.getLogger("orchestrator.sdnotify")

# What the protocol gives the daemon; its children must not inherit it (see procgroup).
PROTOCOL_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _address(value: str | None) -> str | None:
    if not value or value[0] not in "/@":
        return None  # unset, or a form we do not speak (vsock)
    return "\0" + value[1:] if value.startswith("@") else value  # '@' names an abstract socket


def _watchdog_interval(environment: Mapping[str, str]) -> float | None:
    """Half the watchdog period systemd asks for, if it asks this process."""
    try:
        usec = int(environment.get("WATCHDOG_USEC", ""))
        pid = int(environment.get("WATCHDOG_PID") or os.getpid())
    except ValueError:
        return None
    return usec / 1e6 / 2 if usec > 0 and pid == os.getpid() else None


class Notifier:
    """Sends state notifications to the service manager, if there is one."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self._address = _address(environment.get("NOTIFY_SOCKET"))
        self.watchdog_interval_s = _watchdog_interval(environment) if self._address else None
        self._socket: socket.socket | None = None
        if self._address is not None and hasattr(socket, "AF_UNIX"):
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)  # a datagram or nothing: never wait on the manager
        self._last_status = ""

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ)

    def send(self, **fields: str) -> None:
        if self._socket is None or self._address is None:
            return
        message = "".join(f"{name}={value}\n" for name, value in fields.items()).encode()
        try:
            self._socket.sendto(message, self._address)
        except OSError as error:  # the manager went away or is overwhelmed: the next one may pass
            log.debug("sd_notify %s failed: %s", ",".join(fields), error)

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.send(STATUS=status)

    def reloading(self) -> None:
        self.send(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))

    def stopping(self) -> None:
        self.send(STOPPING="1", STATUS="stopping: letting requests finish, then stopping the children")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping the watchdog from this loop until cancelled (returns at once when none is asked for)."""
        task_status.started()
        if self.watchdog_interval_s is None:
            return
        while True:
            self.send(WATCHDOG="1")
            await trio.sleep(self.watchdog_interval_s)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
