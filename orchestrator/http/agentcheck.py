"""HAProxy's agent check: one TCP line in ("<mode> <model>"), one status line out (see fleet.signals).

HAProxy connects to every server's agent port each ``agent-inter``, sends the
server's ``agent-send`` string and reads a reply such as ``ready up 100%`` or
``drain``. Nothing of ours sits in the request path: HAProxy asks, we answer.
"""

from __future__ import annotations

import logging

import trio

from orchestrator.fleet.signals import agent_reply
from orchestrator.supervisor.fleetview import node_status
from orchestrator.supervisor.pool import Pool

log = logging.getLogger("orchestrator.http.agentcheck")

LINE_LIMIT = 512  # a mode and a model name
ANSWER_WITHIN_S = 2.0  # a client that sends no line in this long is dropped


class AgentCheck:
    """The agent-check listener of one daemon, on ``host:port`` (port 0: any free one)."""

    def __init__(self, pool: Pool, host: str, port: int) -> None:
        self._pool = pool
        self._host = host
        self._port = port

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; started() with the port it listens on."""
        listeners = await trio.open_tcp_listeners(self._port, host=self._host)
        port = int(listeners[0].socket.getsockname()[1])
        log.info("HAProxy agent check on %s:%d (server.agent_port)", self._host, port)
        task_status.started(port)
        await trio.serve_listeners(self._answer, listeners)

    async def _answer(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(ANSWER_WITHIN_S):
                try:
                    line = await _read_line(stream)
                    await stream.send_all(agent_reply(node_status(self._pool), line).encode())
                except trio.BrokenResourceError:  # HAProxy gave up on this check: the next one comes
                    return


async def _read_line(stream: trio.SocketStream) -> str:
    data = b""
    while b"\n" not in data and len(data) < LINE_LIMIT:
        chunk = await stream.receive_some(LINE_LIMIT)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")
