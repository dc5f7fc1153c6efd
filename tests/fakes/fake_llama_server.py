"""A small stand-in for llama-server, for fault injection. Standard library only.

It takes llama-server's command line (``--model PATH --host H --port N`` and
any other flags, ignored) and reads its behaviour from the "model" file, a
JSON object:

    load_s              seconds of "loading" (/health answers 503) before ready
    exit_during_load    exit with this code after load_s instead of becoming ready
    crash_after_chunks  in a streaming reply, die abruptly after this many chunks
    crash_on_request    die abruptly on the first completion request, before answering
    reply_delay_s       wait this long before answering a completion request
    slots               what /props reports as total_slots (default 4)
    ignore_sigterm      keep running on SIGTERM
    grandchild          start a grandchild that ignores SIGTERM and holds stderr open
    stderr_flood_lines  print this many stderr lines once ready
    tokens              tokens per reply (default 4)
    token_delay_s       pause between streamed tokens
    sigterm_waits_s     on SIGTERM, wait up to this long for clients to close their
                        connections first, as llama-server does, and say if any stayed open
    breakdown           {"Host": [model, context, compute], "CUDA0": [...]} in MiB: printed as
                        llama-server's memory accounting while loading, at --verbosity 4; with
                        ``--device A,B`` the GPU rows together are put on those devices instead
                        (model and context shared by ``--tensor-split``, else by free memory;
                        compute on each), as llama.cpp splits layers
    metrics_delay_s     wait this long before answering GET /metrics
    cached_tokens       once it has answered a request, slot 0 holds this many tokens (GET /slots'
                        n_prompt_tokens), as llama-server's cache of that prompt
    kv_bytes_per_token  a saved slot file's size per token, past its header and prompt (default 1000)
    save_delay_s        a slot save takes this long
    crash_during_save   a slot save writes half its file, then the process dies
    restore_forgets     a restore loads the file, but a request on its prompt finds nothing cached
                        (as a sliding-window model does)

``--list-devices`` lists the devices in ``$FAKE_LLAMA_DEVICES``
(``CUDA0:24576:24000,CUDA1:...``: name, total MiB, free MiB), else none.

It answers llama-server's other routes in their shapes, enough to route them:
``/v1/messages`` (Anthropic, streamed too), ``/v1/responses`` (streamed too),
``/tokenize``, ``/detokenize``, ``/apply-template``, ``/infill`` (with
``"fim": true`` in the model file, else llama-server's 501), the rerank routes
(with ``--reranking``, else its 501), ``/v1/audio/transcriptions`` (multipart:
it counts the bytes it got), ``/props`` (with ``model_path``), ``/slots``,
``/lora-adapters``; with ``--slot-save-path DIR``, slot save and restore
(``POST /slots/{id}?action=...``, llama.cpp's file header and packed prompt, checked
on restore as llama-server does) and ``/completion`` on a slot's prompt reports
``timings.cache_n``; any other method echoes what reached it. Every JSON answer
carries ``path`` (with the query) and ``request_keys``, so tests can see what
reached the child. A body may come chunked.

``--help`` prints the llama-server help shipped in orchestrator/data. Like
llama-server it binds first, answers 503 while loading, logs "model
loaded" and "listening on" when ready, ends a stream with an event carrying
``timings``, serves ``llamacpp:*`` series on /metrics (with ``--metrics``), and fails with "couldn't bind HTTP
server socket" when the port is taken. ``POST /fake/control`` with
``{"health": "ok" | "error" | "hang"}`` changes what /health does from then on;
``{"flood": N, "batch": B, "pause_s": P, "first": F}`` prints N 1 KB stderr lines
numbered from F (default 0), B at a time with a pause of P seconds between batches.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class State:
    behaviour: dict[str, Any] = {}  # noqa: RUF012 - process-wide fake state
    model_path = ""
    alias = ""
    ready = threading.Event()
    health = "ok"
    requests = 0
    prompt_tokens = 0
    generated_tokens = 0
    open_connections = 0  # client connections not yet closed (kept-alive ones included)
    slot_save_path = ""
    slot_tokens: dict[int, int] = {}  # noqa: RUF012 - tokens cached per slot
    restored: set[int] = set()  # noqa: RUF012 - slots filled by a restore


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes: with Nagle on, the body waits for a delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    def handle(self) -> None:
        State.open_connections += 1
        try:
            super().handle()  # every request on this connection, until the client closes it
        finally:
            State.open_connections -= 1

    def log_message(self, format: str, *args: Any) -> None:
        log(f"srv  log_server_r: request: {self.command} {self.path} {args[1] if len(args) > 1 else ''}")

    def send_json(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            pieces = []
            while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                pieces.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()  # the empty line after the last chunk
            return b"".join(pieces)
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def echo(self) -> None:
        body = self.read_body()
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.send_json(
            200, {"method": self.command, "path": self.path, "body_bytes": len(body), "headers": headers}
        )

    do_PUT = do_DELETE = do_PATCH = echo

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if not State.ready.is_set():
            self.send_json(
                503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
            )
        elif path == "/metrics" and "--metrics" in sys.argv:
            time.sleep(float(State.behaviour.get("metrics_delay_s", 0)))
            body = (
                "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
                "# TYPE llamacpp:prompt_tokens_total counter\n"
                f"llamacpp:prompt_tokens_total {State.prompt_tokens}\n"
                "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n"
                "# TYPE llamacpp:tokens_predicted_total counter\n"
                f"llamacpp:tokens_predicted_total {State.generated_tokens}\n"
                "# HELP llamacpp:requests_processing Number of requests processing.\n"
                "# TYPE llamacpp:requests_processing gauge\n"
                "llamacpp:requests_processing 0\n"
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/props":
            props = {"total_slots": int(State.behaviour.get("slots", 4)), "model_path": State.model_path}
            self.send_json(200, {**props, "model_alias": State.alias, "path": self.path})
        elif path == "/slots":
            count = State.behaviour.get("slots", 4)
            slots = [{"id": i, "n_ctx": 512, "is_processing": False} for i in range(count)]
            for slot in slots:
                if slot["id"] in State.slot_tokens:
                    slot["n_prompt_tokens"] = State.slot_tokens[slot["id"]]
            self.send_json(200, slots)
        elif path == "/lora-adapters":
            self.send_json(200, [])
        elif path == "/health":
            if State.health == "hang":
                time.sleep(3600)
            elif State.health == "error":
                self.send_json(500, {"error": {"code": 500, "message": "fake: unhealthy"}})
            else:
                self.send_json(200, {"status": "ok"})
        else:
            self.send_json(404, {"error": {"code": 404, "message": "File Not Found"}})

    def do_POST(self) -> None:
        raw = self.read_body()
        if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
            self.transcribe(raw)
            return
        body = json.loads(raw or b"{}")
        if self.path == "/fake/control":
            State.health = body.get("health", State.health)
            if "flood" in body:
                threading.Thread(
                    target=flood,
                    args=(body["flood"], body.get("batch", 100), body.get("pause_s", 0.01)),
                    kwargs={"first": body.get("first", 0)},
                ).start()
            self.send_json(200, {"health": State.health})
            return
        if not State.ready.is_set():
            self.send_json(
                503, {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
            )
            return
        if self.path.startswith("/slots/"):
            self.slot_action(body)
            return
        State.requests += 1
        if "cached_tokens" in State.behaviour and 0 not in State.slot_tokens:
            State.slot_tokens[0] = int(State.behaviour["cached_tokens"])
        if self.path == "/completion" and "id_slot" in body:
            self.send_json(200, completion_on_slot(body))
            return
        time.sleep(float(State.behaviour.get("reply_delay_s", 0)))
        if State.behaviour.get("crash_on_request"):
            log("fake: crashing mid-request")
            os._exit(4)
        tokens = [f"tok{i} " for i in range(int(State.behaviour.get("tokens", 4)))]
        State.prompt_tokens += 3
        State.generated_tokens += len(tokens)
        seen = {"path": self.path, "request_keys": sorted(body)}  # lets tests see what reached the child
        if self.path == "/v1/embeddings":
            vectors = [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]
            self.send_json(200, {"object": "list", "data": vectors, **seen})
        elif self.path == "/v1/messages" and body.get("stream"):
            self.stream_events(anthropic_events(body, tokens))
        elif self.path == "/v1/responses" and body.get("stream"):
            self.stream_events(responses_events(tokens))
        elif self.path in OTHER_ROUTES:
            status, answer = OTHER_ROUTES[self.path](body, tokens)
            self.send_json(status, {**answer, **seen} if status == 200 else answer)
        elif body.get("stream"):
            self.stream(tokens)
        else:
            message = {"role": "assistant", "content": "".join(tokens)}
            self.send_json(
                200,
                {
                    "object": "chat.completion",
                    "model": body.get("model", ""),
                    "choices": [{"index": 0, "finish_reason": "length", "message": message}],
                    "usage": {
                        "prompt_tokens": 3,
                        "completion_tokens": len(tokens),
                        "total_tokens": 3 + len(tokens),
                    },
                    **seen,
                },
            )

    def slot_action(self, body: dict[str, Any]) -> None:
        if not State.slot_save_path:
            self.send_json(*not_supported("This server does not support slots action. Start it with `--slot-save-path`"))  # noqa: E501
            return
        slot = int(self.path.split("/")[2].split("?")[0])
        action = self.path.partition("action=")[2]
        path = os.path.join(State.slot_save_path, body.get("filename", ""))
        if action == "save":
            time.sleep(float(State.behaviour.get("save_delay_s", 0)))
            tokens = State.slot_tokens.get(slot, 0)
            data = slot_file(tokens)
            with open(path, "wb") as file:
                if State.behaviour.get("crash_during_save"):
                    file.write(data[: len(data) // 2])
                    file.flush()
                    log("fake: crashing during a slot save")
                    os._exit(5)
                file.write(data)
            self.send_json(200, {"id_slot": slot, "filename": body["filename"], "n_saved": tokens,
                                 "n_written": len(data), "timings": {"save_ms": 1.0}})  # fmt: skip
        elif action == "restore":
            tokens = restored_tokens(path)
            if tokens is None:
                message = "Unable to restore slot: No available space in KV cache or invalid slot save file"
                error = {"code": 400, "message": message, "type": "invalid_request_error"}
                self.send_json(400, {"error": error})
                return
            State.slot_tokens[slot] = tokens
            State.restored.add(slot)
            read = os.path.getsize(path)
            self.send_json(200, {"id_slot": slot, "filename": body["filename"], "n_restored": tokens,
                                 "n_read": read, "timings": {"restore_ms": 1.0}})  # fmt: skip
        else:
            self.send_json(400, {"error": {"code": 400, "message": "Invalid action"}})

    def transcribe(self, raw: bytes) -> None:
        """A multipart transcription: how many bytes of which fields came."""
        boundary = self.headers["Content-Type"].split("boundary=", 1)[1].strip('"').encode()
        fields = {}
        for part in raw.split(b"--" + boundary)[1:-1]:
            head, _, value = part.partition(b"\r\n\r\n")
            name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
            fields[name] = value[:-2]  # the part's own line end
        model = fields.get("model", b"").decode()
        self.send_json(200, {"text": f"{len(fields.get('file', b''))} bytes heard", "model": model,
                             "file_bytes": len(fields.get("file", b"")), "path": self.path})  # fmt: skip

    def stream_events(self, events: list[tuple[str | None, dict[str, Any]]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event, data in events:
            prefix = f"event: {event}\n" if event else ""
            self.write_chunk(f"{prefix}data: {json.dumps(data)}\n\n".encode())
        self.write_chunk(b"")

    def stream(self, tokens: list[str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        crash_after = State.behaviour.get("crash_after_chunks")
        for index, token in enumerate(tokens):
            if crash_after is not None and index >= crash_after:
                log("fake: crashing mid-stream")
                os._exit(3)
            chunk = {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": token}}],
            }
            self.write_chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            time.sleep(float(State.behaviour.get("token_delay_s", 0)))
        timings = {"cache_n": 1, "prompt_n": 2, "predicted_n": len(tokens), "predicted_per_second": 50.0}
        final = {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}}],
            "timings": timings,
        }
        self.write_chunk(f"data: {json.dumps(final)}\n\n".encode())
        self.write_chunk(b"data: [DONE]\n\n")
        self.write_chunk(b"")

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


SEQ_MAGIC, PACKED = 0x67677371, -1


def slot_file(tokens: int) -> bytes:
    """A slot file as llama-server writes one: header, packed prompt (ids 1..n), then the state."""
    packed = [PACKED, 1, tokens, *range(1, tokens + 1)]
    state = b"k" * (tokens * int(State.behaviour.get("kv_bytes_per_token", 1000)))
    return struct.pack("<III", SEQ_MAGIC, 4, len(packed)) + struct.pack(f"<{len(packed)}i", *packed) + state


def restored_tokens(path: str) -> int | None:
    """The prompt length of a slot file llama-server would load, or None (as its restore fails)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    if len(data) < 12 or struct.unpack_from("<I", data)[0] != SEQ_MAGIC:
        return None
    count = struct.unpack_from("<I", data, 8)[0]
    if len(data) < 12 + 4 * count or count < 3:
        return None
    tokens = struct.unpack_from("<i", data, 20)[0]
    expected = 12 + 4 * count + tokens * int(State.behaviour.get("kv_bytes_per_token", 1000))
    return tokens if len(data) == expected else None


def completion_on_slot(body: dict[str, Any]) -> dict[str, Any]:
    """/completion pinned to a slot: what of its prompt was found cached, in llama-server's timings."""
    slot = int(body["id_slot"])
    prompt = body.get("prompt")
    asked = len(prompt) if isinstance(prompt, list) else 3
    forgets = State.behaviour.get("restore_forgets") and slot in State.restored
    cached = 0 if forgets else max(0, min(asked, State.slot_tokens.get(slot, 0)) - 1)
    State.slot_tokens[slot] = max(asked, State.slot_tokens.get(slot, 0))
    timings = {"cache_n": cached, "prompt_n": asked - cached, "predicted_n": 0}
    return {"content": "", "tokens_cached": asked, "timings": timings}


def not_supported(message: str) -> tuple[int, dict[str, Any]]:
    return 501, {"error": {"code": 501, "message": message, "type": "not_supported_error"}}


def rerank(body: dict[str, Any], _tokens: list[str]) -> tuple[int, dict[str, Any]]:
    if not {"--rerank", "--reranking"} & set(sys.argv):
        return not_supported("This server does not support reranking. Start it with `--reranking`")
    documents = body.get("documents", [])
    results = [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(documents))]
    return 200, {"model": State.alias, "results": results, "usage": {"prompt_tokens": 5, "total_tokens": 5}}


def infill(_body: dict[str, Any], tokens: list[str]) -> tuple[int, dict[str, Any]]:
    if not State.behaviour.get("fim"):
        return not_supported("Infill is not supported by this model: prefix token is missing. ")
    return 200, {"content": "".join(tokens), "timings": {"prompt_n": 3, "predicted_n": len(tokens)}}


def anthropic_message(_body: dict[str, Any], tokens: list[str]) -> tuple[int, dict[str, Any]]:
    usage = {"input_tokens": 1, "cache_read_input_tokens": 2, "output_tokens": len(tokens)}
    content = [{"type": "text", "text": "".join(tokens)}]
    message = {"type": "message", "role": "assistant", "model": State.alias, "content": content}
    return 200, {**message, "usage": usage}


def anthropic_events(_body: dict[str, Any], tokens: list[str]) -> list[tuple[str | None, dict[str, Any]]]:
    start = {"type": "message", "role": "assistant", "model": State.alias, "usage": {"input_tokens": 3}}
    events: list[tuple[str | None, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for text in tokens:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        events.append(("content_block_delta", delta))
    events.append(("message_delta", {"type": "message_delta", "usage": {"output_tokens": len(tokens)}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def responses_answer(_body: dict[str, Any], tokens: list[str]) -> tuple[int, dict[str, Any]]:
    usage = {"input_tokens": 3, "output_tokens": len(tokens), "total_tokens": 3 + len(tokens)}
    text = [{"type": "message", "content": [{"type": "output_text", "text": "".join(tokens)}]}]
    return 200, {"object": "response", "model": State.alias, "output": text, "usage": usage}


def responses_events(tokens: list[str]) -> list[tuple[str | None, dict[str, Any]]]:
    events: list[tuple[str | None, dict[str, Any]]] = [
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": t}) for t in tokens
    ]
    done = {"type": "response.completed", "response": responses_answer({}, tokens)[1]}
    return [*events, ("response.completed", done)]


OTHER_ROUTES = {
    "/tokenize": lambda body, _t: (200, {"tokens": [1, 2, 3]}),
    "/detokenize": lambda body, _t: (200, {"content": "tok0 tok1"}),
    "/apply-template": lambda body, _t: (200, {"prompt": "<|user|>hi"}),
    "/v1/messages/count_tokens": lambda body, _t: (200, {"input_tokens": 7}),
    "/v1/chat/completions/input_tokens": lambda body, _t: (200, {"input_tokens": 7}),
    "/infill": infill,
    "/v1/messages": anthropic_message,
    "/v1/responses": responses_answer,
    **dict.fromkeys(["/v1/rerank", "/rerank", "/reranking", "/v1/reranking"], rerank),
}


def flood(lines: int, batch: int, pause_s: float, first: int = 0) -> None:
    """Print ``lines`` stderr lines of 1 KB numbered from ``first``, ``batch`` at a time."""
    padding = "x" * 1000
    for start in range(first, first + lines, batch):
        numbers = range(start, min(start + batch, first + lines))
        sys.stderr.write("".join(f"flood {i} {padding}\n" for i in numbers))
        sys.stderr.flush()
        time.sleep(pause_s)


def on_sigterm(_signum: int, _frame: object) -> None:
    log(f"fake: SIGTERM, shutting down with {State.open_connections} client connection(s) open")
    deadline = time.monotonic() + float(State.behaviour.get("sigterm_waits_s", 0))
    while State.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    if State.open_connections:
        log(f"fake: {State.open_connections} client connection(s) still open; exiting anyway")
    os._exit(0)


HELP = os.path.join(os.path.dirname(__file__), "..", "..", "orchestrator", "data", "llama-server-help.txt")


def devices() -> list[tuple[str, int, int]]:
    """(name, total MiB, free MiB) of the fake GPUs."""
    found = []
    for entry in filter(None, os.environ.get("FAKE_LLAMA_DEVICES", "").split(",")):
        name, total, free = entry.split(":")
        found.append((name, int(total), int(free)))
    return found


def placed(breakdown: dict[str, list[int]], argv: list[str]) -> dict[str, list[int]]:
    """The breakdown on the devices ``--device`` names, split by ``--tensor-split`` (see the docstring)."""
    chosen = [d for d in option(argv, "--device", "").split(",") if d and d != "none"]
    gpu_rows = [row for device, row in breakdown.items() if device != "Host"]
    if not chosen or not gpu_rows:
        return breakdown
    free = {name: free for name, _total, free in devices()}
    split = option(argv, "--tensor-split", "")
    shares = [float(s) for s in split.split(",")] if split else [free.get(d, 1) for d in chosen]
    model, context = sum(row[0] for row in gpu_rows), sum(row[1] for row in gpu_rows)
    compute = max(row[2] for row in gpu_rows)
    result = {"Host": breakdown.get("Host", [0, 0, 0])}
    for device, share in zip(chosen, shares, strict=True):
        part = share / sum(shares)
        result[device] = [round(model * part), round(context * part), compute]
    return result


def option(argv: list[str], name: str, default: str) -> str:
    """The last value of ``name`` on the command line."""
    values = [argv[i + 1] for i, token in enumerate(argv[:-1]) if token == name]
    return values[-1] if values else default


def print_breakdown(breakdown: dict[str, list[int]]) -> None:
    """The accounting llama-server prints while loading at --verbosity 4, in its format."""
    prefix = "common_memory_breakdown_print: |"
    columns = "total   free    self   model   context   compute    unaccounted"
    log(f"{prefix} memory breakdown [MiB] | {columns} |")
    totals = {name: (total, free) for name, total, free in devices()}
    for device, (model, context, compute) in breakdown.items():
        own = f"{model + context + compute:6} = {model:6} + {context:6} + {compute:6}"
        if device in totals:
            total, free = totals[device]
            left = max(0, free - model - context - compute)
            log(f"{prefix}   - {device} (Fake GPU)     | {total:6} = {left:6} + ({own}) + {0:6} |")
        else:
            log(f"{prefix}   - {device:<18} |                {own}          |")


def main(argv: list[str]) -> int:
    if argv == ["--help"]:  # answer like the llama-server whose help we ship
        with open(HELP) as file:
            sys.stdout.write(file.read())
        return 0
    if argv == ["--list-devices"]:
        print("Available devices:")
        for name, total, free in devices() or []:
            print(f"  {name}: Fake GPU ({total} MiB, {free} MiB free)")
        if not devices():
            print("  (none)")
        return 0
    options: dict[str, str] = {}
    for index, token in enumerate(argv):
        if token in ("--model", "--host", "--port") and index + 1 < len(argv):
            options[token] = argv[index + 1]
    with open(options["--model"]) as file:
        State.behaviour = json.load(file)
    State.model_path = os.path.abspath(options["--model"])
    State.slot_save_path = option(argv, "--slot-save-path", "")
    if State.slot_save_path and not os.path.isdir(State.slot_save_path):
        log(f"error while handling argument \"--slot-save-path\": not a directory: {State.slot_save_path}")
        return 1
    aliases = option(argv, "--alias", "")
    State.alias = aliases.split(",")[0] if aliases else State.model_path
    behaviour = State.behaviour
    host, port = options.get("--host", "127.0.0.1"), int(options.get("--port", "8080"))
    if behaviour.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_sigterm)
    log(f"fake: argv {' '.join(argv)}")
    if behaviour.get("grandchild"):
        grandchild = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
            ]
        )
        log(f"fake: grandchild pid {grandchild.pid}")
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as error:
        log(f"srv    start: couldn't bind HTTP server socket, hostname: {host}, port: {port} ({error})")
        return 1
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log(f"load_model: loading model '{options['--model']}'")
    time.sleep(float(behaviour.get("load_s", 0)))
    verbosity = option(argv, "--verbosity", option(argv, "-lv", "3"))
    if "breakdown" in behaviour and int(verbosity) >= 4:
        print_breakdown(placed(behaviour["breakdown"], argv))
    if behaviour.get("exit_during_load") is not None:
        log("fake: failed to load model")
        return int(behaviour["exit_during_load"])
    State.ready.set()
    log("srv  llama_server: model loaded")
    log(f"srv  llama_server: listening on http://{host}:{port}")
    for index in range(int(behaviour.get("stderr_flood_lines", 0))):
        sys.stderr.write(f"fake: flood line {index} " + "x" * 80 + "\n")
    sys.stderr.flush()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
