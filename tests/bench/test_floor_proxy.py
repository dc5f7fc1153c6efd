"""ops/bench/floor_proxy.py, the bench's reference point: it must relay what the child says, whole."""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import trio

from tests.conftest import FAKE_SERVER, free_port, poll_until

FLOOR_PROXY = Path(__file__).parents[2] / "ops" / "bench" / "floor_proxy.py"


@asynccontextmanager
async def serving(argv: list[str], port: int) -> AsyncIterator[trio.Process]:
    """``argv`` started, once it answers on ``port``; killed at the end if still running."""
    process = await trio.lowlevel.open_process(argv)
    try:
        async with httpx.AsyncClient() as client:

            async def answers() -> bool:
                assert process.poll() is None, f"{argv} exited with {process.returncode}"
                try:
                    await client.get(f"http://127.0.0.1:{port}/health")
                except httpx.TransportError:
                    return False
                return True

            await poll_until(answers, timeout_s=20)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        await process.wait()


async def test_the_floor_proxy_relays_answers_and_streams_and_stops_on_sigint(
    fake_model: Callable[..., str],
) -> None:
    child_port, port = free_port(), free_port()
    child = [sys.executable, str(FAKE_SERVER), "--model", fake_model(tokens=5), "--port", str(child_port)]
    proxy = [sys.executable, str(FLOOR_PROXY), "--child-port", str(child_port), "--port", str(port)]
    async with serving(child, child_port), serving(proxy, port) as floor:
        direct = openai.OpenAI(base_url=f"http://127.0.0.1:{child_port}/v1", api_key="-", max_retries=0)
        through = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        ask = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}]}

        def content(client: openai.OpenAI) -> str | None:
            return client.chat.completions.create(**ask).choices[0].message.content

        def streamed() -> list[str | None]:
            return [
                c.choices[0].delta.content
                for c in through.chat.completions.create(**ask, stream=True)
                if c.choices
            ]

        expected = await trio.to_thread.run_sync(content, direct)
        for _ in range(2):  # the second goes over the kept connection
            assert await trio.to_thread.run_sync(content, through) == expected
        pieces = await trio.to_thread.run_sync(streamed)
        assert len([p for p in pieces if p]) == 5
        floor.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await floor.wait() == 0
