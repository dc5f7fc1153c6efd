"""What a llama-server child uses, per device: estimated from the GGUF and its flags, or read from its log.

Pure. The estimate follows llama.cpp's own allocation, checked against its
``-lv 4`` accounting (``common_memory_breakdown_print``) on the real binary:

- **weights**: each tensor's bytes from the GGUF header, on the device its
  layer runs on. ``--gpu-layers N`` puts the last N repeating layers on the
  GPUs (split across them by their memory), and the output layer too when N is
  more than the layer count; the token embeddings stay on the host;
  ``--n-cpu-moe N`` keeps the experts of the first N layers on the host and
  ``--override-tensor PATTERN=DEVICE`` moves whatever its pattern matches.
- **KV cache**: cells x layers x KV heads x (key + value head size) x the
  cache type's bytes (``--cache-type-k/-v``). Full-attention layers have
  ``--ctx-size`` cells (the model's trained context when 0 or unset);
  sliding-window layers ``min(ctx, window x slots + ubatch)`` with a unified
  cache, ``window + ubatch`` per slot without (``--kv-unified``,
  ``--parallel``, ``--swa-full``), padded to 256.
- **compute**: ``ubatch x 4 B x (3 x n_ff + 5 x n_embd)`` for the layer
  graph, the attention masks (``ubatch x cells x 2 B`` per kind of layer),
  and without flash attention ``heads x cells x ubatch x 4 B`` of scores.
- **host extras** (not in llama.cpp's "self", yet resident): the output
  buffer (``vocab x 4 B x slots``), the prompt cache a child grows into
  (``--cache-ram``), and the process itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.flags import Flag

MiB = 1 << 20
HOST = "Host"  # llama.cpp's name for host memory in its accounting
PROCESS_OVERHEAD_BYTES = 32 * MiB  # the binary, its libraries, allocator slack (measured: 18 to 60 MiB)
DEFAULT_SLOTS = 4  # llama-server's --parallel when unset (auto)
DEFAULT_UBATCH = 512
DEFAULT_BATCH = 2048
DEFAULT_PROMPT_CACHE_MIB = 8192  # llama-server's own --cache-ram default
CELL_PADDING = 256
# Bytes per KV cache element by --cache-type-k/-v (quantised types: block bytes / block size).
KV_TYPE_BYTES = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
    "iq4_nl": 18 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32,
}  # fmt: skip
# Architectures with sliding-window layers, and llama.cpp's pattern: every Nth layer attends fully.
SWA_PATTERNS = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4}
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Tensor:
    name: str
    nbytes: int

    @property
    def layer(self) -> int | None:
        match = _LAYER.match(self.name)
        return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ModelFacts:
    """What the estimate needs from a GGUF header."""

    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ctx_train: int
    n_vocab: int
    n_swa: int = 0  # the sliding window, 0 if none
    tensors: tuple[Tensor, ...] = ()

    @property
    def weights_bytes(self) -> int:
        return sum(tensor.nbytes for tensor in self.tensors)

    def is_swa_layer(self, layer: int) -> bool:
        pattern = SWA_PATTERNS.get(self.architecture, 0)
        return self.n_swa > 0 and pattern > 0 and (layer + 1) % pattern != 0


@dataclass(frozen=True)
class Settings:
    """The flags that decide a child's memory, with llama-server's defaults filled in."""

    n_ctx: int
    slots: int = DEFAULT_SLOTS
    kv_unified: bool = True
    type_k: str = "f16"
    type_v: str = "f16"
    ubatch: int = DEFAULT_UBATCH
    flash_attn: bool = True  # "auto" is on wherever it is supported
    gpu_layers: int | None = None  # None: all (llama-server's default where there is a GPU)
    n_cpu_moe: int = 0
    overrides: tuple[tuple[str, str], ...] = ()  # (tensor name pattern, device)
    swa_full: bool = False
    kv_offload: bool = True
    devices: tuple[str, ...] | None = None  # --device: the GPUs it may use (None: all)
    prompt_cache_mib: int = DEFAULT_PROMPT_CACHE_MIB

    @classmethod
    def of(cls, flags: Sequence[Flag], n_ctx_train: int) -> Settings:
        values = {flag.name: flag.values[0] if flag.values else "" for flag in flags}
        names = {flag.name for flag in flags}

        def number(name: str, default: int) -> int:
            try:
                return int(values[name]) if name in values else default
            except ValueError:
                return default  # 'auto' and the like: llama-server's default

        n_ctx = number("--ctx-size", 0) or n_ctx_train
        slots = number("--parallel", DEFAULT_SLOTS)
        gpu_layers_text = values.get("--gpu-layers", "auto")
        gpu_layers = None if gpu_layers_text in ("auto", "all", "-1") else number("--gpu-layers", 0)
        overrides = tuple(
            (pattern, device)
            for flag in flags
            if flag.name == "--override-tensor"
            for part in flag.values[0].split(",")
            for pattern, _, device in [part.partition("=")]
            if device
        )
        device_text = values.get("--device")
        return cls(
            n_ctx=n_ctx,
            slots=slots if slots > 0 else DEFAULT_SLOTS,
            kv_unified="--no-kv-unified" not in names,
            type_k=values.get("--cache-type-k", "f16"),
            type_v=values.get("--cache-type-v", "f16"),
            ubatch=min(number("--ubatch-size", DEFAULT_UBATCH), number("--batch-size", DEFAULT_BATCH)),
            flash_attn=values.get("--flash-attn", "auto") not in ("off", "0", "false"),
            gpu_layers=gpu_layers,
            n_cpu_moe=number("--n-cpu-moe", 0),
            overrides=overrides,
            swa_full="--swa-full" in names,
            kv_offload="--no-kv-offload" not in names,
            devices=None if device_text is None else tuple(d for d in device_text.split(",") if d != "none"),
            prompt_cache_mib=number("--cache-ram", DEFAULT_PROMPT_CACHE_MIB),
        )


@dataclass(frozen=True)
class Footprint:
    """Bytes per device ("Host", "CUDA0", ...), with llama.cpp's parts (model, context, compute)."""

    devices: Mapping[str, int]
    parts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    source: str = "estimate"  # estimate | learned | file size

    def total(self) -> int:
        return sum(self.devices.values())

    def plus(self, device: str, extra: int) -> Footprint:
        devices = dict(self.devices)
        devices[device] = devices.get(device, 0) + extra
        return Footprint(devices, self.parts, self.source)


def retarget(footprint: Footprint, devices: Sequence[str], shares: Sequence[int] = ()) -> Footprint:
    """What a child measured on some GPUs uses on ``devices`` instead (split by ``shares``).

    Weights and KV cache follow the layers, so they are shared out; each GPU that
    runs layers has its own compute buffer, as large as the largest one measured.
    The host's part stays as it was.
    """
    gpu_parts = {device: part for device, part in footprint.parts.items() if device != HOST}
    if not gpu_parts:
        gpu_parts = {d: {"model": amount} for d, amount in footprint.devices.items() if d != HOST}
    if not gpu_parts or not devices:
        return footprint  # nothing on a GPU to move
    model = sum(part.get("model", 0) for part in gpu_parts.values())
    context = sum(part.get("context", 0) for part in gpu_parts.values())
    compute = max(part.get("compute", 0) for part in gpu_parts.values())
    weights = list(shares) if len(shares) == len(devices) else [1] * len(devices)
    parts = {HOST: dict(footprint.parts.get(HOST, {"model": footprint.devices.get(HOST, 0)}))}
    for device, weight in zip(devices, weights, strict=True):
        share = weight / sum(weights)
        parts[device] = {"model": round(model * share), "context": round(context * share), "compute": compute}
    return Footprint({d: sum(p.values()) for d, p in parts.items()}, parts, footprint.source)


def _pad(cells: int) -> int:
    return max(CELL_PADDING, math.ceil(cells / CELL_PADDING) * CELL_PADDING)


def kv_cells(facts: ModelFacts, settings: Settings, layer: int) -> tuple[int, int]:
    """(cells per stream, streams) of one layer's KV cache."""
    n_ctx = _pad(settings.n_ctx)
    streams = 1 if settings.kv_unified else settings.slots
    per_stream = n_ctx // streams
    if facts.is_swa_layer(layer) and not settings.swa_full:
        window = facts.n_swa * (settings.slots if settings.kv_unified else 1) + settings.ubatch
        per_stream = min(per_stream, _pad(window))
    return per_stream, streams


def layer_devices(facts: ModelFacts, settings: Settings, gpus: Sequence[tuple[str, int]]) -> list[str]:
    """The device of each repeating layer: the last ``--gpu-layers`` on the GPUs, split by their memory."""
    usable = [(name, size) for name, size in gpus if settings.devices is None or name in settings.devices]
    wanted = facts.n_layer if settings.gpu_layers is None else max(0, settings.gpu_layers)
    offloaded = min(facts.n_layer, wanted) if usable else 0
    devices = [HOST] * (facts.n_layer - offloaded)
    total = sum(size for _name, size in usable) or 1
    start = 0.0
    for name, size in usable:
        share = offloaded * size / total
        count = round(start + share) - round(start)
        devices += [name] * count
        start += share
    return devices + [usable[-1][0]] * (facts.n_layer - len(devices)) if usable else devices


def estimate(facts: ModelFacts, settings: Settings, gpus: Sequence[tuple[str, int]] = ()) -> Footprint:
    """llama.cpp's own accounting of a child (its "self": model + context + compute), per device.

    ``gpus``: (device, memory) of the GPUs the binary sees; their memory splits the layers.
    """
    layers = layer_devices(facts, settings, gpus)
    output_on_gpu = settings.gpu_layers is None or settings.gpu_layers > facts.n_layer
    output_device = layers[-1] if layers and output_on_gpu else HOST
    model: dict[str, int] = {}
    for tensor in facts.tensors:
        device = _tensor_device(tensor, facts, settings, layers, output_device)
        model[device] = model.get(device, 0) + tensor.nbytes
    context: dict[str, int] = {}
    bytes_per_cell = facts.n_head_kv * (
        facts.head_dim_k * KV_TYPE_BYTES.get(settings.type_k, 2.0)
        + facts.head_dim_v * KV_TYPE_BYTES.get(settings.type_v, 2.0)
    )
    for layer in range(facts.n_layer):
        per_stream, streams = kv_cells(facts, settings, layer)
        device = layers[layer] if settings.kv_offload else HOST
        context[device] = context.get(device, 0) + round(per_stream * streams * bytes_per_cell)
    compute = {device: _compute_bytes(facts, settings) for device in set(layers) if device != HOST}
    compute[HOST] = _compute_bytes(facts, settings) if not compute else settings.ubatch * 4 * facts.n_embd * 2
    parts = {
        device: {
            "model": model.get(device, 0),
            "context": context.get(device, 0),
            "compute": compute.get(device, 0),
        }
        for device in sorted(set(model) | set(context) | set(compute))
    }
    return Footprint({device: sum(part.values()) for device, part in parts.items()}, parts)


def _tensor_device(
    tensor: Tensor, facts: ModelFacts, settings: Settings, layers: Sequence[str], output_device: str
) -> str:
    for pattern, device in settings.overrides:
        if re.search(pattern, tensor.name):
            return HOST if device.upper().startswith("CPU") else device
    layer = tensor.layer
    if layer is None:
        return output_device if tensor.name.startswith("output") else HOST
    if layer < settings.n_cpu_moe and "_exps" in tensor.name:
        return HOST
    return layers[layer] if layer < len(layers) else HOST


def _compute_bytes(facts: ModelFacts, settings: Settings) -> int:
    ubatch = settings.ubatch
    graph = ubatch * 4 * (3 * facts.n_ff + 5 * facts.n_embd)
    full_cells = _pad(settings.n_ctx) // (1 if settings.kv_unified else settings.slots)
    masks = ubatch * 2 * full_cells
    swa_layers = [layer for layer in range(facts.n_layer) if facts.is_swa_layer(layer)]
    if swa_layers:
        masks += ubatch * 2 * kv_cells(facts, settings, swa_layers[0])[0]
    scores = 0 if settings.flash_attn else facts.n_head * full_cells * ubatch * 4
    return graph + masks + scores


def host_extras(facts: ModelFacts | None, settings: Settings) -> int:
    """Resident host memory beyond llama.cpp's "self": output buffer, prompt cache, the process."""
    output = 0 if facts is None else facts.n_vocab * 4 * settings.slots
    cache = max(0, settings.prompt_cache_mib) * MiB
    return output + cache + PROCESS_OVERHEAD_BYTES


# -- llama-server's own accounting --------------------------------------------------------

_BREAKDOWN = "memory breakdown [MiB]"
_ROW = re.compile(r"\|\s+-\s+(?P<name>[^|]+?)\s+\|(?P<numbers>[^|]*)\|")


def parse_breakdown(lines: Iterable[str]) -> Footprint | None:
    """The first ``memory breakdown [MiB]`` table in llama-server's ``-lv 4`` log, or None.

    Host rows (``Host``, ``CPU_REPACK``, ...) say ``self = model + context + compute``;
    GPU rows say ``total = free + (self = model + context + compute) + unaccounted``.
    All host-side rows are summed as the host.
    """
    parts: dict[str, dict[str, int]] = {}
    in_table = False
    for line in lines:
        if _BREAKDOWN in line:
            if parts:
                break  # printed again at exit: the first one is the load's
            in_table = True
            continue
        match = _ROW.search(line) if in_table else None
        if match is None:
            if in_table and parts:
                break
            continue
        numbers = [int(n) for n in re.findall(r"\d+", match.group("numbers"))]
        name = match.group("name").split("(")[0].strip()
        device = HOST if name.startswith(("Host", "CPU")) else name
        if "(" in match.group("numbers") and len(numbers) >= 7:
            _total, _free, _self, model, context, compute = numbers[:6]
        elif len(numbers) >= 4:
            _self, model, context, compute = numbers[:4]
        else:
            continue
        current = parts.setdefault(device, {"model": 0, "context": 0, "compute": 0})
        for key, mib in (("model", model), ("context", context), ("compute", compute)):
            current[key] += mib * MiB
    if not parts:
        return None
    return Footprint({device: sum(p.values()) for device, p in parts.items()}, parts, "learned")
