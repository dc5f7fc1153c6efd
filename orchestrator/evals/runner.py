"""Asking questions through an OpenAI-compatible endpoint and recording each scored answer as it comes."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import trio

from orchestrator.errors import AskFailed, EndpointError, only_errors_of
from orchestrator.evals.store import Answer, Store, run_id
from orchestrator.evals.suites import Question, Suite, Verdict

log = logging.getLogger("orchestrator.evals")


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI base URL (``http://host:port/v1``), its headers, and what to call it in run names."""

    base_url: str
    where: str  # "local" for the daemon of the config, else the URL given
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    max_tokens: int | None = None  # None: each suite's own default
    seed: int = 0


@dataclass(frozen=True)
class Reply:
    text: str
    latency_s: float
    prompt_tokens: int | None
    completion_tokens: int | None
    timings: Mapping[str, Any]
    params: Mapping[str, Any]


# Statuses that say the request itself is wrong for this endpoint, whatever the question.
_FATAL_STATUSES = {401: "the key was refused", 403: "the key was refused", 404: "not found"}


def _endpoint_error(endpoint: Endpoint, model: str, response: httpx.Response) -> EndpointError:
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:300]  # not an OpenAI-shaped error
    hint = _FATAL_STATUSES[response.status_code]
    if response.status_code == 404 and "model" not in message.lower():
        hint += f"; is {endpoint.base_url} an OpenAI base URL (usually ending in /v1)?"
    elif response.status_code == 404:
        hint += f"; is {model!r} a model or agent name that endpoint serves?"
    return EndpointError(f"{endpoint.base_url}: HTTP {response.status_code} ({hint}): {message}")


async def ask(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    model: str,
    prompt: str,
    *,
    sampling: Sampling,
    max_tokens: int,
) -> Reply:
    params = {"temperature": sampling.temperature, "max_tokens": max_tokens, "seed": sampling.seed}
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], **params}
    started = time.perf_counter()
    try:
        response = await client.post(
            f"{endpoint.base_url}/chat/completions", json=body, headers=dict(endpoint.headers)
        )
    except httpx.ConnectError as error:
        raise EndpointError(f"cannot reach {endpoint.base_url}: {error}") from error
    except httpx.HTTPError as error:
        raise AskFailed(f"{endpoint.base_url}: {error or type(error).__name__}") from error
    latency = time.perf_counter() - started
    if response.status_code in _FATAL_STATUSES:
        raise _endpoint_error(endpoint, model, response)
    if response.status_code != 200:
        raise AskFailed(f"{endpoint.base_url}: HTTP {response.status_code}: {response.text[:300]}")
    payload = response.json()
    usage = payload.get("usage") or {}
    text = payload["choices"][0]["message"].get("content") or ""
    return Reply(text, latency, usage.get("prompt_tokens"), usage.get("completion_tokens"),
                 payload.get("timings") or {}, params)  # fmt: skip


class Progress(Protocol):
    def advance(self, correct: bool, note: str) -> None: ...


@contextmanager
def progress_for(title: str, total: int, done: int, correct: int) -> Iterator[Progress]:
    """A progress bar (done/total, accuracy so far, ETA) on a terminal; a plain line per answer elsewhere."""
    if sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("acc {task.fields[accuracy]}"), TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(title, total=total, completed=done, accuracy=_accuracy(correct, done))
            yield _BarProgress(bar, task, done, correct)
    else:
        yield _LineProgress(title, total, done, correct)


def _accuracy(correct: int, done: int) -> str:
    return f"{correct / done:.3f}" if done else "-"


@dataclass
class _Counts:
    done: int
    correct: int

    def add(self, correct: bool) -> None:
        self.done += 1
        self.correct += int(correct)


class _BarProgress(_Counts):
    def __init__(self, bar: Any, task: Any, done: int, correct: int) -> None:
        super().__init__(done, correct)
        self._bar, self._task = bar, task

    def advance(self, correct: bool, note: str) -> None:
        self.add(correct)
        self._bar.update(self._task, advance=1, accuracy=_accuracy(self.correct, self.done))


class _LineProgress(_Counts):
    def __init__(self, title: str, total: int, done: int, correct: int) -> None:
        super().__init__(done, correct)
        self._title, self._total = title, total

    def advance(self, correct: bool, note: str) -> None:
        self.add(correct)
        print(f"{self._title} {self.done}/{self._total} acc {_accuracy(self.correct, self.done)}: {note}",
              file=sys.stderr, flush=True)  # fmt: skip


@dataclass(frozen=True)
class RunResult:
    run_id: str
    asked: int
    skipped: int  # already answered in an earlier run of the same command
    errors: list[str]


async def run_questions(
    store: Store,
    *,
    identifier: str,
    questions: Sequence[Question],
    answer: Callable[[Question], Awaitable[tuple[Reply, Verdict]]],
    concurrency: int,
    title: str,
) -> RunResult:
    """Answer every question not yet in ``identifier``, ``concurrency`` at a time, recording each one."""
    done = await trio.to_thread.run_sync(store.answered, identifier)
    todo = [question for question in questions if question.id not in done]
    correct_so_far = sum(1 for row in await trio.to_thread.run_sync(store.answers, identifier)
                         if row["correct"] and row["question_id"] in {q.id for q in questions})  # fmt: skip
    errors: list[str] = []
    lock = trio.Lock()  # one writer at a time on the SQLite connection
    pending = iter(todo)

    with progress_for(title, len(questions), len(questions) - len(todo), correct_so_far) as progress:

        async def worker() -> None:
            for question in pending:
                try:
                    reply, verdict = await answer(question)
                except AskFailed as error:
                    errors.append(f"{question.id}: {error}")
                    log.warning("%s: %s", question.id, error)
                    continue
                record = Answer(
                    question.id, question.subject, question.prompt, reply.text, verdict.extracted,
                    verdict.correct, dict(verdict.details), reply.latency_s, reply.prompt_tokens,
                    reply.completion_tokens, reply.timings, reply.params,
                )  # fmt: skip
                async with lock:
                    await trio.to_thread.run_sync(store.record, identifier, record)
                progress.advance(verdict.correct, f"{question.id} {'right' if verdict.correct else 'wrong'}")

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(max(1, concurrency)):
                    nursery.start_soon(worker)
        except BaseExceptionGroup as group:
            fatal = only_errors_of(group, EndpointError)  # one worker's is enough: the others were stopped
            if fatal is None:
                raise
            raise fatal from None
    return RunResult(identifier, len(todo) - len(errors), len(questions) - len(todo), errors)


async def run_suite(
    store: Store,
    suite: Suite,
    endpoint: Endpoint,
    model: str,
    *,
    sampling: Sampling,
    concurrency: int = 1,
    limit: int | None = None,
) -> RunResult:
    """One suite for one model: resumes the run these settings name."""
    max_tokens = sampling.max_tokens or suite.max_tokens
    settings = {"suite_version": suite.version, "where": endpoint.where, "temperature": sampling.temperature,
                "max_tokens": max_tokens, "seed": sampling.seed}  # fmt: skip
    identifier = run_id(suite.name, model, settings)
    await trio.to_thread.run_sync(store.open_run, identifier, suite.name, model, settings)
    questions = suite.questions()[:limit] if limit else suite.questions()
    timeout = httpx.Timeout(30, read=900)

    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:

        async def answer(question: Question) -> tuple[Reply, Verdict]:
            reply = await ask(
                client, endpoint, model, question.prompt, sampling=sampling, max_tokens=max_tokens
            )
            return reply, await suite.score(question, reply.text)

        return await run_questions(
            store,
            identifier=identifier,
            questions=questions,
            answer=answer,
            concurrency=concurrency,
            title=f"{suite.name} {model}",
        )
