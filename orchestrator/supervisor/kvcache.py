"""Children's KV cache kept across a swap: slots saved before a stop, restored before ready.

A child runs with ``--slot-save-path`` set to its key's own folder in the store
(an owned flag: no user or request can set it). When the pool stops a ready
child for any reason but a crash, it first asks ``save``: every slot holding at
least ``kv_cache.min_tokens`` tokens is saved by llama-server
(``POST /slots/{id}?action=save``) under a name we choose, checked, and
entered in the index. When the same key starts again (same model file,
binary and canonical flags: the key says all three), ``restore`` loads its
files into their slots before the child is marked ready, then asks the child
for one token on the restored prompt: llama-server's ``timings.cache_n`` says
whether the prefix really came back. A key whose restore did not help
(a sliding-window or recurrent model processes its prompt again anyway) is
remembered, its files go and no more are written for it.

Every step is bounded by ``kv_cache.timeout_s``; a save that fails or is
cut short keeps no file, a restore that fails drops its file, and neither
stops the child's stop or start. The store has a disk budget: the least
recently used files go first, and a save that cannot fit is skipped. One
daemon at a time uses a store (a folder lock); the index is replaced
atomically, so a crash never leaves a half-written file the index trusts
(files it does not list are removed at start).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from orchestrator import admission, kvindex
from orchestrator.config import KvCacheSettings
from orchestrator.dirs import cache_dir
from orchestrator.errors import UpstreamError
from orchestrator.filelock import FolderInUseError, FolderLock
from orchestrator.kvindex import KvIndex, SavedSlot, SlotFileError
from orchestrator.routing import RouteTable, SidecarSpec
from orchestrator.supervisor.events import KvDropped, KvRestored, KvSaved, SidecarEvent
from orchestrator.supervisor.upstream import Upstream

E = TypeVar("E", bound=SidecarEvent)
log = logging.getLogger("orchestrator.supervisor.kvcache")

INDEX_NAME = "index.json"
SAVE_PATH_FLAG = "--slot-save-path"
_JSON = [(b"content-type", b"application/json")]


def store_dir(settings: KvCacheSettings) -> Path:
    return Path(settings.dir) if settings.dir else cache_dir() / "kv"


class ChildLike(Protocol):
    """What saving and restoring need of a child (a Sidecar)."""

    spec: SidecarSpec
    slots: int

    @property
    def label(self) -> str: ...
    @property
    def upstream(self) -> Upstream: ...


class KvCache:
    """The store of saved slots: one folder per key, an index, a budget (see the module docstring)."""

    def __init__(
        self,
        settings: KvCacheSettings,
        root: Path,
        disk_free: Callable[[Path], int] = lambda path: shutil.disk_usage(path).free,
    ) -> None:
        self.settings = settings
        self.root = root
        self.index = KvIndex()
        self.unavailable: str | None = "not opened yet"  # why nothing is saved, when it is not
        self.on_event: Callable[[SidecarEvent], None] = lambda _event: None  # set by the pool
        self._disk_free = disk_free
        self._lock = FolderLock(root)
        self._busy: dict[str, trio.Lock] = {}  # per key: a save and a restore never overlap

    # -- the store ---------------------------------------------------------------

    async def run(
        self, routes: RouteTable, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the store until cancelled (``routes``: what is served now)."""
        try:
            await trio.to_thread.run_sync(self.open, routes)
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.close()

    def open(self, routes: RouteTable) -> None:
        """Take the store (blocking file work: run it in a thread) and make the index true."""
        if not self.settings.enabled:
            self.unavailable = "kv_cache.enabled is false"
            return
        try:
            self._lock.acquire()
        except FolderInUseError as error:
            self.unavailable = f"{error}; set kv_cache.dir to a folder of this daemon's own"
            log.warning("KV cache across swaps is off: %s", self.unavailable)
            return
        except OSError as error:
            self.unavailable = f"cannot use {self.root}: {error}"
            log.warning("KV cache across swaps is off: %s", self.unavailable)
            return
        self.unavailable = None
        self.index = self._read_index()
        trusted = [s for s in self.index.slots if self._size_on_disk(s) == s.bytes]
        if len(trusted) < len(self.index.slots):
            log.warning("KV cache: %d indexed file(s) missing or changed; dropped",
                        len(self.index.slots) - len(trusted))  # fmt: skip
        self.index = KvIndex(tuple(trusted), self.index.unhelpful)
        self._remove_unlisted()
        self.forget_stale(routes)

    def close(self) -> None:
        self._lock.release()

    def forget_stale(self, routes: RouteTable) -> None:
        """Remove the files no child of ``routes`` will load (see kvindex.stale)."""
        if self.unavailable is None:
            keys = {routes.key_of(route.name) for route in routes.routes()}
            flexible = {route.identity for route in routes.routes() if route.allow_request_flags}
            gone = kvindex.stale(self.index, keys, flexible)
            self._drop(gone, "its model, llama-server or flags changed, or it is no longer configured")

    def _folder(self, key: str) -> Path:
        return self.root / key

    def _size_on_disk(self, saved: SavedSlot) -> int | None:
        return _size(self._folder(saved.key) / saved.file)

    def _read_index(self) -> KvIndex:
        path = self.root / INDEX_NAME
        try:
            return KvIndex.from_json(json.loads(path.read_bytes()))
        except FileNotFoundError:
            return KvIndex()
        except (OSError, ValueError) as error:  # unreadable: its files are removed as unlisted
            log.warning("KV cache: %s is unreadable (%s); starting afresh", path, error)
            return KvIndex()

    def _write_index(self) -> None:
        path = self.root / INDEX_NAME
        partial = path.with_name(f".{INDEX_NAME}.{os.getpid()}")
        with open(partial, "w") as file:
            json.dump(self.index.to_json(), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)

    def _remove_unlisted(self) -> None:
        listed = {(s.key, s.file) for s in self.index.slots}
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if (folder.name, path.name) not in listed:
                    log.info("KV cache: removing %s (no index entry: a save that never finished)", path)
                    path.unlink(missing_ok=True)

    def _drop(self, gone: list[SavedSlot], why: str) -> None:
        if not gone:
            return
        for saved in gone:
            log.info("KV cache: removing %s slot %d of %s (%s)", saved.model, saved.slot, saved.key[:8], why)
            self._remove_file(saved.key, saved.file)
        self.index = self.index.without(gone)
        self._write_index()

    def _remove_file(self, key: str, name: str) -> None:
        try:
            (self._folder(key) / name).unlink(missing_ok=True)
        except OSError as error:  # Windows: still open by a dying child; removed as unlisted next start
            log.warning("KV cache: cannot remove %s now: %s", name, error)

    def budget(self) -> int:
        free = self._disk_free(self.root) if self.root.exists() else 0
        return kvindex.disk_budget(self.settings.disk_budget, free, self.index.used_bytes)

    # -- children ----------------------------------------------------------------

    def start_argv(self, spec: SidecarSpec, knows: Callable[[str], bool]) -> tuple[str, ...]:
        """What a start of ``spec`` adds to its command line: its own folder, when it saves at all."""
        if self.unavailable is not None or spec.key in self.index.unhelpful or not knows(SAVE_PATH_FLAG):
            return ()
        folder = self._folder(spec.key)
        folder.mkdir(parents=True, exist_ok=True)  # llama-server refuses a folder that does not exist
        return (SAVE_PATH_FLAG, str(folder))

    @staticmethod
    def _saves(spec: SidecarSpec) -> bool:
        return SAVE_PATH_FLAG in spec.extra_argv

    def describe(self, key: str) -> dict[str, Any]:
        """A key's saved slots (for /api/sidecars and the dashboard)."""
        return {
            "slots": [
                {"slot": s.slot, "tokens": s.tokens, "bytes": s.bytes, "made_at": s.made_at}
                for s in self.index.of(key)
            ],
            "unhelpful": self.index.unhelpful.get(key),
        }

    def describe_store(self) -> dict[str, Any]:
        keys = sorted({s.key for s in self.index.slots} | set(self.index.unhelpful))
        return {
            "enabled": self.unavailable is None,
            "unavailable": self.unavailable,
            "dir": str(self.root),
            "min_tokens": self.settings.min_tokens,
            "budget_bytes": self.budget() if self.unavailable is None else 0,
            "used_bytes": self.index.used_bytes,
            "keys": {
                key: {"model": next((s.model for s in self.index.of(key)), None), **self.describe(key)}
                for key in keys
            },
        }

    def _guard(self, key: str) -> trio.Lock:
        return self._busy.setdefault(key, trio.Lock())

    def _emit(self, event: type[E], child: ChildLike, **details: Any) -> None:
        self.on_event(event(key=child.spec.key, model=child.spec.model, ts=time.time(), **details))

    # -- saving --------------------------------------------------------------------

    async def save(self, child: ChildLike) -> None:
        """Save the child's slots worth saving (bounded by kv_cache.timeout_s); never raises."""
        spec = child.spec
        if self.unavailable is not None or not self._saves(spec) or spec.key in self.index.unhelpful:
            return
        async with self._guard(spec.key):
            saving: int | None = None  # the slot under way when the save ended early
            why = ""
            with trio.move_on_after(self.settings.timeout_s) as bounded:
                try:
                    for slot, tokens in await self._slots_worth_saving(child):
                        saving = slot
                        if not await self._save_slot(child, slot, tokens):
                            break
                    saving = None
                except UpstreamError as error:  # it died or stopped answering: nothing more to save
                    why = f"llama-server did not answer: {error}"
            if bounded.cancelled_caught:
                why = f"gave up after {self.settings.timeout_s:g} s (kv_cache.timeout_s)"
            if why and saving is not None:
                self._skip(child, saving, why)
            elif why:
                log.warning("%s KV cache not saved: %s", child.label, why)

    async def _slots_worth_saving(self, child: ChildLike) -> list[tuple[int, int]]:
        status, body = await child.upstream.get("/slots", timeout_s=self.settings.timeout_s)
        if status != 200:
            log.warning("%s KV cache not saved: GET /slots answered %d", child.label, status)
            return []
        try:
            slots = [(int(s["id"]), int(s.get("n_prompt_tokens", 0))) for s in json.loads(body)]
        except (ValueError, TypeError, KeyError) as error:
            log.warning("%s KV cache not saved: GET /slots gave %s", child.label, error)
            return []
        least = self.settings.min_tokens
        return [(slot, tokens) for slot, tokens in slots if kvindex.worth_saving(tokens, least)]

    def _estimate(self, tokens: int) -> int:
        """Bytes a slot of ``tokens`` will take, from the files saved so far (0: no idea yet)."""
        known = [(s.bytes, s.tokens) for s in self.index.slots if s.tokens]
        return 0 if not known else tokens * sum(b for b, _ in known) // sum(t for _, t in known)

    async def _save_slot(self, child: ChildLike, slot: int, tokens: int) -> bool:
        """Save one slot; False when the child can do no more (it died under the save)."""
        spec = child.spec
        budget, estimate = self.budget(), self._estimate(tokens)
        if estimate > budget:
            self._skip(child, slot, f"about {admission.human(estimate)} would not fit "
                       f"the budget of {admission.human(budget)} (kv_cache.disk_budget)")  # fmt: skip
            return True
        name = f"slot{slot}-{int(time.time())}-{secrets.token_hex(4)}.bin"
        started = trio.current_time()
        try:
            status, answer = await _post(
                child.upstream, f"/slots/{slot}?action=save", {"filename": name}, self.settings.timeout_s
            )
        except BaseException:
            self._remove_file(spec.key, name)  # half written, or never
            raise
        if status != 200:
            self._remove_file(spec.key, name)
            self._skip(child, slot, f"llama-server answered {status}: {_message(answer)}")
            return True
        written = int(answer.get("n_written", -1))
        on_disk = _size(self._folder(spec.key) / name)
        if on_disk != written:
            self._remove_file(spec.key, name)
            self._skip(child, slot, f"the file has {on_disk} bytes, llama-server said {written}")
            return True
        now = time.time()
        saved = SavedSlot(spec.key, spec.identity, spec.model, slot, name, int(answer.get("n_saved", tokens)),
                          written, now, now)  # fmt: skip
        replaced = next((s for s in self.index.of(spec.key) if s.slot == slot), None)
        victims, fits = kvindex.make_room(self.index, budget, written, keep=replaced)
        if not fits:
            self._remove_file(spec.key, name)
            self._skip(child, slot, f"{admission.human(written)} do not fit the budget of "
                       f"{admission.human(budget)} (kv_cache.disk_budget)")  # fmt: skip
            return True
        self._drop(victims, "the least recently used, to make room")
        self.index, replaced = self.index.with_slot(saved)
        self._write_index()
        if replaced is not None:
            self._remove_file(replaced.key, replaced.file)
        took = round(trio.current_time() - started, 3)
        log.info("%s KV cache: saved slot %d (%d tokens, %s) in %.3f s",
                 child.label, slot, saved.tokens, admission.human(written), took)  # fmt: skip
        self._emit(KvSaved, child, slot=slot, tokens=saved.tokens, bytes=written, took_s=took)
        return True

    def _skip(self, child: ChildLike, slot: int, why: str) -> None:
        log.warning("%s KV cache: slot %d not saved: %s", child.label, slot, why)
        self._emit(KvDropped, child, action="save", slot=slot, reason=why)

    # -- restoring ----------------------------------------------------------------

    async def restore(self, child: ChildLike) -> None:
        """Load the key's saved slots into the starting child and check they help; never raises."""
        spec = child.spec
        if self.unavailable is not None or not self._saves(spec):
            return
        async with self._guard(spec.key):
            with trio.move_on_after(self.settings.timeout_s) as bounded:
                try:
                    for saved in self.index.of(spec.key):
                        if not await self._restore_slot(child, saved):
                            break
                except UpstreamError as error:
                    log.warning("%s KV cache not restored: %s", child.label, error)
            if bounded.cancelled_caught:
                log.warning("%s KV cache restore gave up after %g s (kv_cache.timeout_s)",
                            child.label, self.settings.timeout_s)  # fmt: skip

    async def _restore_slot(self, child: ChildLike, saved: SavedSlot) -> bool:
        """Restore one file; False when the key turned out not to benefit (stop restoring)."""
        if saved.slot >= child.slots:
            self._refuse(child, saved, f"the child has {child.slots} slot(s)")
            return True
        path = self._folder(saved.key) / saved.file
        try:
            prompt = await trio.to_thread.run_sync(_read_prompt, path, saved.bytes)
        except (OSError, SlotFileError) as error:
            self._refuse(child, saved, str(error))
            return True
        started = trio.current_time()
        status, answer = await _post(
            child.upstream, f"/slots/{saved.slot}?action=restore", {"filename": saved.file},
            self.settings.timeout_s,
        )  # fmt: skip
        if status != 200:
            self._refuse(child, saved, f"llama-server answered {status}: {_message(answer)}")
            return True
        restored = int(answer.get("n_restored", 0))
        took = round(trio.current_time() - started, 3)
        cached = await self._cached_after_restore(child, saved.slot, prompt)
        if cached is not None and not kvindex.restore_helped(restored, cached):
            why = (f"after restoring {restored} tokens, the first request found {cached} cached "
                   "(llama-server processed the prompt again)")  # fmt: skip
            log.warning("%s KV cache does not help %s: %s; no more files for this key",
                        child.label, saved.model, why)  # fmt: skip
            for gone in self.index.of(saved.key):
                self._remove_file(gone.key, gone.file)
            self.index = self.index.marked_unhelpful(saved.key, why)
            self._write_index()
            self._emit(KvDropped, child, action="restore", slot=saved.slot, reason=why)
            return False
        self.index = self.index.touched(saved, time.time())
        self._write_index()
        log.info("%s KV cache: restored slot %d (%d tokens, %d found cached) in %.3f s",
                 child.label, saved.slot, restored, cached or 0, took)  # fmt: skip
        self._emit(KvRestored, child, slot=saved.slot, tokens=restored, bytes=saved.bytes,
                   took_s=took, cached_tokens=cached)  # fmt: skip
        return True

    async def _cached_after_restore(self, child: ChildLike, slot: int, prompt: tuple[int, ...]) -> int | None:
        """How many of the restored tokens a request on the same prompt finds cached (None: unknown)."""
        if not prompt:
            return None
        request = {"prompt": list(prompt), "n_predict": 0, "id_slot": slot, "cache_prompt": True}
        status, answer = await _post(child.upstream, "/completion", request, self.settings.timeout_s)
        timings = answer.get("timings") if status == 200 else None
        if not isinstance(timings, dict) or not isinstance(timings.get("cache_n"), int):
            log.warning("%s KV cache: could not check the restore (/completion answered %d)",
                        child.label, status)  # fmt: skip
            return None
        return int(timings["cache_n"])

    def _refuse(self, child: ChildLike, saved: SavedSlot, why: str) -> None:
        log.warning("%s KV cache: slot %d not restored, file dropped: %s", child.label, saved.slot, why)
        self._drop([saved], why)
        self._emit(KvDropped, child, action="restore", slot=saved.slot, reason=why)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:  # not there (never written, or removed)
        return None


def _read_prompt(path: Path, expected_bytes: int) -> tuple[int, ...]:
    """The prompt in a slot file, after checking the file is whole (as long as when it was saved)."""
    size = path.stat().st_size
    if size != expected_bytes:
        raise SlotFileError(f"{path.name} has {size} bytes, {expected_bytes} were saved: cut or changed")
    with open(path, "rb") as file:
        head = file.read(kvindex.HEADER.size)
        head += file.read(kvindex.prompt_bytes_needed(head) - len(head))
    return kvindex.slot_prompt(head)


async def _post(
    upstream: Upstream, target: str, payload: object, timeout_s: float
) -> tuple[int, dict[str, Any]]:
    """A small JSON POST to the child: its status and its JSON answer ({} when it is not an object)."""
    response = await upstream.request("POST", target, _JSON, json.dumps(payload).encode(), timeout_s)
    body = await response.read()
    try:
        answer = json.loads(body)
    except ValueError:
        return response.status, {}
    return response.status, answer if isinstance(answer, dict) else {}


def _message(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    return str(error.get("message", error)) if isinstance(error, dict) else str(error or answer)
