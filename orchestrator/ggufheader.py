"""A GGUF file's header: the facts the memory estimate needs (footprint.ModelFacts).

A small reader of the GGUF format (version 2 and 3) with the standard library
only: the ``gguf`` package reads the same header in 21 s for a model with a
262,144-token vocabulary (it builds every token string) and brings numpy (14
MiB resident) into the daemon; this skips what it does not need and takes
about 0.1 s. The tests check it against the ``gguf`` package.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from orchestrator.footprint import ModelFacts, Tensor

MAGIC = b"GGUF"
# ggml tensor types: (values per block, bytes per block), as in ggml.h / gguf.constants.
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}  # fmt: skip
# GGUF value types: struct format of the scalar ones; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GgufError(ValueError):
    """The file is not a GGUF this reader understands."""


class _Cursor:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.at = 0

    def scalar(self, kind: int) -> Any:
        fmt = "<" + _SCALARS[kind]
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar(10)
        text = bytes(self.data[self.at : self.at + length]).decode("utf-8", "replace")
        self.at += length
        return text

    def value(self, kind: int, *, keep: bool) -> Any:
        """A value; an array's items only when ``keep`` (otherwise its length, and it is skipped)."""
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            if kind not in _SCALARS:
                raise GgufError(f"unknown GGUF value type {kind}")
            return self.scalar(kind)
        item_kind, count = self.scalar(4), self.scalar(10)
        if item_kind in _SCALARS and not keep:
            self.at += count * struct.calcsize(_SCALARS[item_kind])
            return count
        if item_kind == _STRING and not keep:  # a vocabulary: step over each string, decode none
            for _ in range(count):
                (length,) = struct.unpack_from("<Q", self.data, self.at)
                self.at += 8 + length
            return count
        items = [self.value(item_kind, keep=keep) for _ in range(count)]
        return items if keep else count


def read_facts(path: str | Path) -> ModelFacts:
    """The header of the GGUF at ``path``; GgufError if it is not one."""
    fields, tensors = _read(path)
    return _facts(fields, tensors, str(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The GGUF's metadata fields (token lists only counted; the chat template kept)."""
    return _read(path)[0]


def _read(path: str | Path) -> tuple[dict[str, Any], tuple[Tensor, ...]]:
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != MAGIC:
            raise GgufError(f"{path}: not a GGUF file (no GGUF magic)")
        cursor = _Cursor(data)
        cursor.at = 4
        try:
            version, n_tensors, n_fields = cursor.scalar(4), cursor.scalar(10), cursor.scalar(10)
            if version not in (2, 3):
                raise GgufError(f"{path}: GGUF version {version} (2 and 3 are read)")
            fields: dict[str, Any] = {}
            for _ in range(n_fields):
                key = cursor.string()
                kind = cursor.scalar(4)
                # Per-layer arrays (head counts, feed-forward sizes) are kept; token lists only counted.
                keep = not key.startswith("tokenizer.") or key == "tokenizer.chat_template"
                fields[key] = cursor.value(kind, keep=keep)
            tensors = []
            for _ in range(n_tensors):
                name = cursor.string()
                dims = [cursor.scalar(10) for _ in range(cursor.scalar(4))]
                ggml_type = cursor.scalar(4)
                cursor.scalar(10)  # the data offset
                if ggml_type not in GGML_TYPES:
                    raise GgufError(f"{path}: tensor {name} has unknown ggml type {ggml_type}")
                per_block, block_bytes = GGML_TYPES[ggml_type]
                elements = 1
                for dim in dims:
                    elements *= dim
                tensors.append(Tensor(name, elements // per_block * block_bytes))
        except struct.error as error:
            raise GgufError(f"{path}: the GGUF header is cut short ({error})") from error
    return fields, tuple(tensors)


def _facts(fields: dict[str, Any], tensors: tuple[Tensor, ...], path: str) -> ModelFacts:
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise GgufError(f"{path}: no general.architecture")

    def number(name: str, default: int | None = None) -> int:
        value = fields.get(f"{arch}.{name}", default)
        if isinstance(value, list):  # per layer: the largest one decides the memory
            value = max(value) if value else default
        if not isinstance(value, int | float):
            raise GgufError(f"{path}: no {arch}.{name}")
        return int(value)

    n_embd, n_head = number("embedding_length"), number("attention.head_count")
    vocab = fields.get(f"{arch}.vocab_size") or fields.get("tokenizer.ggml.tokens", 0)
    return ModelFacts(
        architecture=arch,
        n_layer=number("block_count"),
        n_embd=n_embd,
        n_ff=number("feed_forward_length", 4 * n_embd),
        n_head=n_head,
        n_head_kv=number("attention.head_count_kv", n_head),
        head_dim_k=number("attention.key_length", n_embd // max(1, n_head)),
        head_dim_v=number("attention.value_length", n_embd // max(1, n_head)),
        n_ctx_train=number("context_length", 4096),
        n_vocab=int(vocab),
        n_swa=number("attention.sliding_window", 0),
        tensors=tensors,
    )
