"""A child's own error, in our terms.

llama-server answers a route it was not started for with its status and a
message such as "This server does not support embeddings. Start it with
`--embeddings`". Here nobody starts it by hand: its flags come from the
configuration (or from a request, where the model allows that), so the message
keeps llama-server's words and adds where to put the flag. Everything else a
child says passes through untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

# Where, here, a request's child would get these flags ("Here: add ..."), or None to say nothing.
WhereToEnable = Callable[[Sequence[str]], str | None]

STATUSES = frozenset({400, 501})  # what llama-server answers a missing capability with
MAX_BYTES = 64 * 1024  # an error body; anything larger is not one of these
_START_WITH = re.compile(r"[Ss]tart it with `(--[a-z0-9-]+)`")
# Embeddings of a model whose pooling is "none" (its default for a chat model): OpenAI's shape needs one.
_NO_POOLING = "Pooling type 'none' is not OAI compatible"
_NO_FIM = "Infill is not supported by this model"
_NO_FIM_HINT = (
    "Here: infill needs a model with fill-in-the-middle tokens (a code model such as Qwen2.5-Coder); "
    "no flag adds them"
)


def enabling_flags(message: str) -> tuple[str, ...] | None:
    """The flags that would give the child what ``message`` says it lacks, if it says."""
    if _NO_POOLING in message:
        return ("--pooling", "mean")
    found = _START_WITH.search(message)
    return (found.group(1),) if found else None


def hint(message: str, where_to_enable: WhereToEnable) -> str | None:
    """What to add to ``message`` here, or None."""
    if _NO_FIM in message:
        return _NO_FIM_HINT
    flags = enabling_flags(message)
    return None if flags is None else where_to_enable(flags)


def explain(status: int, body: bytes, where_to_enable: WhereToEnable) -> bytes | None:
    """``body`` (an OpenAI-shaped error) with the hint added to its message; None: pass it on as it is."""
    if status not in STATUSES or len(body) > MAX_BYTES:
        return None
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # not JSON: not one of these
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict) or not isinstance(message := error.get("message"), str):
        return None
    if (added := hint(message, where_to_enable)) is None:
        return None
    error["message"] = f"{message.rstrip().rstrip('.')}. {added}."
    return json.dumps(document).encode()
