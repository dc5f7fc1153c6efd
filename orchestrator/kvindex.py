"""Saved KV cache slots: the files' format, the store's index and its rules. Pure.

A slot file is what llama-server writes for ``POST /slots/{id}?action=save``
(llama.cpp's ``llama_state_seq_save_file``): a header of three little-endian
u32 (the magic ``ggsq``, a version, a count ``n``), ``n`` int32 holding the
slot's prompt, then the slot's state. llama-server packs the prompt there as
-1, a format version, a u32 token count and the token ids (older builds: the
ids alone). The header and the prompt are what we check before a file is
restored, and the prompt is what the first request after a restore is
compared against.

The index lists, per file, the key it belongs to, the model's and binary's
identity, the slot, its tokens and bytes, when it was made and last used. A
file the index does not list is not ours to trust (a save that never
finished); a key whose restore did not bring its prefix back is remembered as
unhelpful, and no more files are written for it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from orchestrator import admission

SEQ_MAGIC = 0x67677371  # "ggsq"
HEADER = struct.Struct("<III")
_PACKED_MARKER = -1  # llama-server's packed prompt (server_tokens::serialize) starts so
INDEX_VERSION = 1
# A restore helped when the first request found at least this share of the restored tokens
# cached; llama-server always evaluates the last token again, and a model with a sliding window
# finds none (it processes the whole prompt again).
HELPED_SHARE = 0.9


class SlotFileError(ValueError):
    """A slot file is not one llama-server wrote, or was cut short."""


@dataclass(frozen=True)
class SavedSlot:
    """One saved slot file of one key."""

    key: str
    identity: str  # the model's and binary's identity: the file goes when they are no longer served
    model: str
    slot: int
    file: str  # its name in the key's folder (ours, never a client's)
    tokens: int
    bytes: int
    made_at: float
    used_at: float  # last saved or restored: the budget lets the least recently used go first

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SavedSlot:
        return cls(
            key=str(data["key"]),
            identity=str(data["identity"]),
            model=str(data["model"]),
            slot=int(data["slot"]),
            file=str(data["file"]),
            tokens=int(data["tokens"]),
            bytes=int(data["bytes"]),
            made_at=float(data["made_at"]),
            used_at=float(data["used_at"]),
        )


@dataclass(frozen=True)
class KvIndex:
    """Every saved slot file the store trusts, and the keys restoring does not help."""

    slots: tuple[SavedSlot, ...] = ()
    unhelpful: Mapping[str, str] = field(default_factory=dict)  # key -> what was seen

    def of(self, key: str) -> list[SavedSlot]:
        return sorted((saved for saved in self.slots if saved.key == key), key=lambda s: s.slot)

    @property
    def used_bytes(self) -> int:
        return sum(saved.bytes for saved in self.slots)

    def with_slot(self, saved: SavedSlot) -> tuple[KvIndex, SavedSlot | None]:
        """This index with ``saved`` in, and the file it replaces (the key's same slot), if any."""
        replaced = next((s for s in self.slots if (s.key, s.slot) == (saved.key, saved.slot)), None)
        kept = tuple(s for s in self.slots if s is not replaced)
        return replace(self, slots=(*kept, saved)), replaced

    def without(self, gone: Iterable[SavedSlot]) -> KvIndex:
        names = {(s.key, s.file) for s in gone}
        return replace(self, slots=tuple(s for s in self.slots if (s.key, s.file) not in names))

    def touched(self, saved: SavedSlot, at: float) -> KvIndex:
        return replace(self, slots=tuple(replace(s, used_at=at) if s == saved else s for s in self.slots))

    def marked_unhelpful(self, key: str, why: str) -> KvIndex:
        return replace(
            self, slots=tuple(s for s in self.slots if s.key != key), unhelpful={**self.unhelpful, key: why}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": INDEX_VERSION,
            "slots": [saved.to_json() for saved in self.slots],
            "unhelpful": dict(self.unhelpful),
        }

    @classmethod
    def from_json(cls, data: object) -> KvIndex:
        """An index from its JSON; raises ValueError for anything else (the caller starts afresh)."""
        if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
            raise ValueError("not a version 1 KV cache index")
        try:
            slots = tuple(SavedSlot.from_json(entry) for entry in data["slots"])
            unhelpful = {str(key): str(why) for key, why in dict(data.get("unhelpful", {})).items()}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"a malformed entry ({error})") from error
        return cls(slots, unhelpful)


def slot_prompt(head: bytes) -> tuple[int, ...]:
    """The prompt tokens in the start of a slot file (at least ``prompt_bytes_needed`` of it)."""
    if len(head) < HEADER.size:
        raise SlotFileError(f"{len(head)} bytes is shorter than a slot file's header")
    magic, _version, count = HEADER.unpack_from(head)
    if magic != SEQ_MAGIC:
        raise SlotFileError(f"not a llama.cpp slot file (magic {magic:#010x}, expected {SEQ_MAGIC:#010x})")
    if len(head) < HEADER.size + 4 * count:
        raise SlotFileError(f"the file is cut short inside its {count}-token prompt")
    packed = struct.unpack_from(f"<{count}i", head, HEADER.size)
    if not packed or packed[0] != _PACKED_MARKER:
        return tuple(packed)  # an older llama-server's plain token list
    if count < 3 or packed[2] > count - 3:
        raise SlotFileError("the packed prompt is shorter than the token count it gives")
    return tuple(packed[3 : 3 + packed[2]])


def prompt_bytes_needed(head: bytes) -> int:
    """How much of a file ``slot_prompt`` reads, given at least its header."""
    if len(head) < HEADER.size:
        raise SlotFileError(f"{len(head)} bytes is shorter than a slot file's header")
    count: int = HEADER.unpack_from(head)[2]
    return HEADER.size + 4 * count


def worth_saving(tokens: int, min_tokens: int) -> bool:
    return tokens > 0 and tokens >= min_tokens


def restore_helped(restored: int, cached: int) -> bool:
    """Whether a request that found ``cached`` tokens of ``restored`` ones got its prefix back."""
    return restored <= 1 or cached >= HELPED_SHARE * (restored - 1)


def disk_budget(setting: str, free: int, used: int) -> int:
    """The store's budget: a size, or a share of the free disk counting what the store holds as free."""
    return admission.budget_bytes(setting, free + used)


def make_room(
    index: KvIndex, budget: int, incoming: int, keep: SavedSlot | None = None
) -> tuple[list[SavedSlot], bool]:
    """Which files go (least recently used first) so ``incoming`` bytes fit, and whether they then do.

    ``keep`` (the file an incoming save replaces) is counted as gone already and never chosen.
    Nothing is chosen when it cannot fit anyway.
    """
    others = sorted((s for s in index.slots if s != keep), key=lambda s: s.used_at)
    free = budget - sum(s.bytes for s in others)
    if incoming > budget:
        return [], False
    victims = []
    for saved in others:
        if free >= incoming:
            break
        victims.append(saved)
        free += saved.bytes
    return victims, free >= incoming


def stale(index: KvIndex, keys: Iterable[str], open_identities: Iterable[str]) -> list[SavedSlot]:
    """Files no child will load again: of keys no longer configured (a model, binary or flags changed,
    or the name is gone), unless their model takes per-request flags (``open_identities``: a request may
    ask for that key again; the budget bounds those)."""
    kept, open_ = set(keys), set(open_identities)
    return [saved for saved in index.slots if saved.key not in kept and saved.identity not in open_]
