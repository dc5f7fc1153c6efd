"""The eval runner against a daemon on the fake llama-server: record, resume, and when to stop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.errors import EndpointError
from orchestrator.evals.runner import Endpoint, Sampling, run_suite
from orchestrator.evals.store import Store
from orchestrator.evals.suites import Question, Suite, Verdict
from orchestrator.routing import LlamaServerBinary
from tests.conftest import free_port, make_config, running_daemon

KEY = "k" * 24


class ThreeQuestions(Suite):
    """Right when the reply has the fake's last token."""

    name, version = "three", "v1"

    def questions(self) -> list[Question]:
        return [Question(f"q{n}", f"question {n}", "tok3") for n in range(3)]

    async def score(self, question: Question, reply: str) -> Verdict:
        words = reply.split()
        return Verdict(words[-1] if words else None, question.reference in reply)


async def test_answers_are_scored_recorded_with_their_parameters_and_resumed(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    store = Store(tmp_path / "results")
    config = make_config(tmp_path, {"m": {"path": fake_model()}})
    async with running_daemon(config, fake_binary) as (url, _daemon):
        endpoint = Endpoint(f"{url}/v1", "local")
        first = await run_suite(store, ThreeQuestions(), endpoint, "m", sampling=Sampling(), concurrency=2)
        again = await run_suite(store, ThreeQuestions(), endpoint, "m", sampling=Sampling(), concurrency=2)
    assert (first.asked, first.skipped, first.errors) == (3, 0, [])
    assert (again.run_id, again.asked, again.skipped) == (first.run_id, 0, 3)
    rows = store.answers(first.run_id)
    assert [row["question_id"] for row in rows] == ["q0", "q1", "q2"]
    assert all(row["correct"] and row["extracted"] == "tok3" for row in rows)
    assert rows[0]["params"] == {"temperature": 0.0, "max_tokens": 512, "seed": 0}
    assert rows[0]["completion_tokens"] == 4 and rows[0]["latency_s"] > 0


async def test_a_failing_child_fails_its_questions_but_not_the_run(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    store = Store(tmp_path / "results")
    config = make_config(tmp_path, {"m": {"path": fake_model(crash_on_request=True)}})
    async with running_daemon(config, fake_binary) as (url, _daemon):
        result = await run_suite(store, ThreeQuestions(), Endpoint(f"{url}/v1", "local"), "m",
                                 sampling=Sampling())  # fmt: skip
    assert result.asked == 0 and len(result.errors) == 3  # each was tried; a rerun tries them again
    assert all(" HTTP 502: " in error or " HTTP 503: " in error for error in result.errors), result.errors
    assert store.answered(result.run_id) == set()


async def test_an_endpoint_that_cannot_answer_anything_stops_the_run_with_the_reason(
    tmp_path: Path, fake_binary: LlamaServerBinary, fake_model: Callable[..., str]
) -> None:
    store = Store(tmp_path / "results")
    nobody = Endpoint(f"http://127.0.0.1:{free_port()}/v1", "nobody")
    with pytest.raises(EndpointError, match=r"cannot reach http://127\.0\.0\.1:"):
        await run_suite(store, ThreeQuestions(), nobody, "m", sampling=Sampling())

    config = make_config(tmp_path, {"m": {"path": fake_model()}}, server={"api_keys": [KEY]})
    async with running_daemon(config, fake_binary) as (url, _daemon):
        keyed = Endpoint(f"{url}/v1", "local", {"Authorization": f"Bearer {KEY}"})
        with pytest.raises(
            EndpointError, match=r"HTTP 404 .*is 'nope' a model or agent name .*known models: m"
        ):
            await run_suite(store, ThreeQuestions(), keyed, "nope", sampling=Sampling())
        # (The daemon serves llama.cpp's version-less spellings too: a URL without /v1 would work.)
        wrong_prefix = Endpoint(f"{url}/v2", "local", keyed.headers)
        with pytest.raises(EndpointError, match=r"HTTP 404 .*usually ending in /v1"):
            await run_suite(store, ThreeQuestions(), wrong_prefix, "m", sampling=Sampling())
        with pytest.raises(EndpointError, match=r"HTTP 401 \(the key was refused\)"):
            await run_suite(store, ThreeQuestions(), Endpoint(f"{url}/v1", "local"), "m", sampling=Sampling())
    assert all(run["answered"] == 0 for run in store.runs())
