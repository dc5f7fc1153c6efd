"""ops/bench/floor_proxy.py, the bench's reference point: it must relay what the child says, whole."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai

from tests.conftest import FAKE_SERVER, free_port

FLOOR_PROXY = Path(__file__).parents[2] / "ops" / "bench" / "floor_proxy.py"


@contextmanager
def serving(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(argv, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, argv
                time.sleep(0.05)  # polled with a deadline: it binds on its own time
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_the_floor_proxy_relays_answers_and_streams_and_stops_on_sigint(
    fake_model: Callable[..., str],
) -> None:
    child_port, port = free_port(), free_port()
    child = [sys.executable, str(FAKE_SERVER), "--model", fake_model(tokens=5), "--port", str(child_port)]
    proxy = [sys.executable, str(FLOOR_PROXY), "--child-port", str(child_port), "--port", str(port)]
    with serving(child, child_port), serving(proxy, port) as floor:
        direct = openai.OpenAI(base_url=f"http://127.0.0.1:{child_port}/v1", api_key="-", max_retries=0)
        through = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        ask = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}]}
        for _ in range(2):  # the second goes over the kept connection
            answer = through.chat.completions.create(**ask)
            assert (
                answer.choices[0].message.content
                == direct.chat.completions.create(**ask).choices[0].message.content
            )
        pieces = [
            c.choices[0].delta.content
            for c in through.chat.completions.create(**ask, stream=True)
            if c.choices
        ]
        assert len([p for p in pieces if p]) == 5
        floor.send_signal(signal.SIGINT)
        assert floor.wait(timeout=20) == 0
