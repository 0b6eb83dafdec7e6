"""Decode tokens/s on phones, ESTIMATED from bytes read per token and memory bandwidth.

One decode step of a small LLM streams every weight once, so on a CPU it runs at roughly
``usable bandwidth / bytes per token``. The host's own decode speed says how close to that the program
gets (its efficiency); the estimate assumes a device gets the same efficiency out of its bandwidth:

    efficiency      = bytes_per_token x host tokens/s / host read bandwidth (measured here)
    device tokens/s = device usable bandwidth x efficiency / bytes_per_token

Host and device run the same program, so bytes_per_token cancels: the estimate is the host's speed
scaled by the bandwidth ratio. bytes_per_token still decides whether that scaling means anything (a
working set that fits in cache, or a step dominated by per-token overhead, does not scale with DRAM
bandwidth) and gives the memory-bound ceiling. Such cases are reported as ``"confidence": "low"``
with the reason, never as a confident number.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeqat.errors import EdgeqatError
from edgeqat.runtime_check.device_profiles import DeviceProfile

MIB = 1 << 20
FLOAT32_BYTES = 4
SCALE_BYTES = 4  # quantized embedding scales are float32 in the .pte (measured on an 8- and a 4-bit export)

# Phone CPUs read at roughly half to two thirds of their LPDDR peak; the host's figure is measured, so
# the device's must be an achievable one too. A profile's measured_bandwidth_gb_s replaces this.
ASSUMED_USABLE_BANDWIDTH_FRACTION = 0.6
# Phone SoCs carry up to ~32 MiB of L3 + system-level cache: a smaller working set may never reach DRAM.
DEVICE_CACHE_BYTES = 32 * MIB
# A memory-bound CPU decode reaches well over half the measured read bandwidth; below a quarter, most of
# the step is per-token overhead (operator dispatch, thread sync, non-delegated ops).
MIN_EFFICIENCY = 0.25
# The OS kills apps that take much more than half the RAM (Android's low-memory killer, iOS jetsam).
MAX_RAM_SHARE = 0.5


@dataclass(frozen=True)
class DecodeBytes:
    """What one decode step reads, in bytes."""

    pte_bytes: int  # the .pte's data as passed (constants + delegate weights)
    embedding_table_bytes: int  # the token embedding's own bytes in the .pte: not read, but for one row
    embedding_row_bytes: int
    kv_cache_bytes: int  # K and V of every layer over context_tokens positions, float32
    context_tokens: int

    @property
    def total(self) -> int:
        return self.pte_bytes - self.embedding_table_bytes + self.embedding_row_bytes + self.kv_cache_bytes

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "bytes_per_token": self.total}


def _config_int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EdgeqatError(f"model config has no usable {key!r} ({value!r}); pass the converted model's config.json")
    return value


def decode_bytes_per_token(
    pte_bytes: int,
    model_config: Mapping[str, Any],
    embedding_bits: int | None,
    context_tokens: int,
    embedding_group_size: int | None = None,
    bytes_stored_once: int = 0,
) -> DecodeBytes:
    """Bytes one decode step of an edgeqat `.pte` reads.

    ``pte_bytes``: the .pte's data, best ``pte_data_bytes(path)``; the file size also works and counts
    the flatbuffer program (a few % on a tiny model, nothing on a real one). ``model_config``: the
    converted model's config.json as a dict (or report.json's "model"). ``embedding_bits``: None, 8 or 4,
    from the manifest; ``embedding_group_size``: the manifest's group_size (0 or None: one scale per row);
    ``bytes_stored_once``: the manifest's ``export.bytes_stored_once``, the table's bytes that are also the
    output layer's weights (read every step).

    Assumptions, from how export/ builds the program:
    - Every linear, lm_head included, is a quantized XNNPACK linear whose weights are all read each step;
      lm_head is quantized as a linear of its own. A tied int4 table is stored once (the gather reads
      the output layer's bytes), so only its separate scales are left out here; otherwise the gather's
      whole copy is.
    - The token embedding is a gather: one row per token. Float32 when not quantized (export runs in
      float32); otherwise int8 or packed int4 with one float32 scale per group (fused into ExecuTorch's
      quantized embedding kernels).
    - The KV cache is float32: 2 (K, V) x layers x kv_heads x head_dim x context_tokens x 4 bytes. It is
      memory-planned, not stored in the .pte. The program's attention (ExecuTorch's custom_sdpa) reads the
      positions filled so far, so ``context_tokens`` is the context a decode step sees (on average, the
      prompt plus half the decoded tokens).
    - Not counted: activations (kilobytes per token); the host calibration absorbs them.
    """
    vocab = _config_int(model_config, "vocab_size")
    hidden = _config_int(model_config, "hidden_size")
    kv_cache = kv_cache_bytes(model_config, context_tokens)

    if embedding_bits is None:
        row = hidden * FLOAT32_BYTES
    elif embedding_bits in (4, 8):
        groups = hidden // embedding_group_size if embedding_group_size else 1
        row = hidden * embedding_bits // 8 + groups * SCALE_BYTES
    else:
        raise EdgeqatError(f"embedding_bits must be None, 4 or 8, got {embedding_bits!r}")
    table = vocab * row
    if table >= pte_bytes:
        raise EdgeqatError(
            f"the embedding table ({table} bytes) is not smaller than the .pte data ({pte_bytes} bytes): "
            "the model config does not describe this program"
        )
    if not 0 <= bytes_stored_once <= table:  # all of it for a float table (no scales of its own)
        raise EdgeqatError(f"bytes_stored_once {bytes_stored_once} is not part of the embedding table ({table} bytes)")
    return DecodeBytes(pte_bytes, table - bytes_stored_once, row, kv_cache, context_tokens)


def kv_cache_bytes(model_config: dict, context_tokens: int, value_bytes: int = FLOAT32_BYTES) -> int:
    """The K and V rows a decode step reads over ``context_tokens`` positions: 2 x layers x kv_heads x head_dim
    x context x ``value_bytes`` (float32 in our program; llama.cpp's cache is f16)."""
    hidden = _config_int(model_config, "hidden_size")
    layers = _config_int(model_config, "num_hidden_layers")
    heads = model_config.get("num_attention_heads")
    kv_heads = _config_int(model_config, "num_key_value_heads", heads)
    head_dim = model_config.get("head_dim") or (hidden // heads if isinstance(heads, int) and heads else None)
    head_dim = _config_int({"head_dim": head_dim}, "head_dim")
    if context_tokens < 1:
        raise EdgeqatError(f"context_tokens must be at least 1, got {context_tokens}")
    return 2 * layers * kv_heads * head_dim * context_tokens * value_bytes


def pte_data_bytes(pte_path: str | Path) -> int:
    """The .pte's data (constants, delegate weights) without its flatbuffer program, from the extended
    header ("eh00": program size, segment base offset, segment data size); the file size when absent."""
    path = Path(pte_path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    if len(head) < 40 or head[8:12] != b"eh00":
        return size
    header_length = struct.unpack_from("<I", head, 12)[0]
    _, segment_base, *rest = struct.unpack_from("<QQQ" if header_length >= 32 else "<QQ", head, 16)
    segment_data = rest[0] if rest else 0
    if segment_data:
        return segment_data
    return size - segment_base if segment_base else size


def host_last_level_cache_bytes() -> int | None:
    """The largest CPU cache of this host (Linux sysfs), or None where it cannot be read."""
    best: tuple[int, int] | None = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        multiplier = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit() and (best is None or level > best[0]):
            best = (level, int(digits) * multiplier)
    return best[1] if best else None


def measure_host_bandwidth(threads: int, buffer_bytes: int | None = None, repeats: int = 5) -> float:
    """This host's achievable memory read bandwidth in GB/s: the best of ``repeats`` sums of a float32
    buffer several times the last-level cache, with ``threads`` torch threads (~0.5 s)."""
    import torch

    if buffer_bytes is None:
        buffer_bytes = min(512 * MIB, max(64 * MIB, 4 * (host_last_level_cache_bytes() or 0)))
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        buffer = torch.ones(buffer_bytes // FLOAT32_BYTES, dtype=torch.float32)  # touches every page first
        buffer.sum()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            buffer.sum()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return buffer.numel() * FLOAT32_BYTES / best / 1e9


def _host_doubts(bytes_per_token: int, efficiency: float, cache_bytes: int | None) -> list[str]:
    """Why scaling this host's decode speed by memory bandwidth would mislead, if it would."""
    doubts = []
    mib = bytes_per_token / MIB
    if cache_bytes and bytes_per_token <= cache_bytes:
        doubts.append(
            f"one decode step reads {mib:.1f} MiB, which fits in the host's {cache_bytes / MIB:.0f} MiB "
            "last-level cache, so the host's speed is not set by DRAM bandwidth"
        )
    elif bytes_per_token <= DEVICE_CACHE_BYTES:
        doubts.append(
            f"one decode step reads {mib:.1f} MiB, which can stay in a phone SoC's caches "
            f"(up to ~{DEVICE_CACHE_BYTES // MIB} MiB), so the device's speed may not be set by DRAM bandwidth"
        )
    if efficiency < MIN_EFFICIENCY:
        doubts.append(
            f"the host used only {efficiency:.0%} of its read bandwidth while decoding: the step is mostly "
            "per-token overhead (operator dispatch, thread sync, non-delegated ops), which does not scale "
            "with memory bandwidth"
        )
    elif efficiency > 1:
        doubts.append(f"the host decoded faster than its DRAM allows ({efficiency:.0%} of it): weights came from cache")
    return doubts


def _device_row(
    profile: DeviceProfile, bytes_per_token: int, efficiency: float, threads: int,
    host_doubts: list[str], resident_bytes: int | None,
) -> dict[str, Any]:
    if profile.measured_bandwidth_gb_s is not None:
        usable, basis = profile.measured_bandwidth_gb_s, "measured on the device (profile)"
    else:
        usable = profile.memory_bandwidth_gb_s * ASSUMED_USABLE_BANDWIDTH_FRACTION
        basis = f"assumed {ASSUMED_USABLE_BANDWIDTH_FRACTION:.0%} of the theoretical peak"
    doubts = []  # this device's own; the host's are in the estimate's top-level "why"
    if threads > profile.big_cores:
        doubts.append(
            f"{threads} threads but {profile.big_cores} big cores: threads on little cores hold back every "
            f"step; run the app with {profile.big_cores}"
        )
    if resident_bytes is not None and resident_bytes > MAX_RAM_SHARE * profile.ram_gib * (1 << 30):
        doubts.append(
            f"the program needs ~{resident_bytes / (1 << 30):.1f} GiB, over half of the device's "
            f"{profile.ram_gib:g} GiB of RAM: the OS may kill the app"
        )
    return {
        "name": profile.name,
        "soc": profile.soc,
        "label": "estimate",
        "tokens_per_s": round(usable * 1e9 * efficiency / bytes_per_token, 1),
        "bandwidth_bound_tokens_per_s": round(usable * 1e9 / bytes_per_token, 1),
        "confidence": "low" if doubts or host_doubts else "medium",
        "why": "; ".join(doubts) or ("the host calibration is low confidence (see the top-level why)" if host_doubts else None),
        "memory_bandwidth_gb_s": profile.memory_bandwidth_gb_s,
        "usable_bandwidth_gb_s": round(usable, 2),
        "bandwidth_basis": basis,
        "big_cores": profile.big_cores,
        "cores": profile.cores,
        "ram_gib": profile.ram_gib,
        "source": profile.source,
        "aliases": list(profile.aliases),
        "measured": None,
    }


def estimate_devices(
    bytes_per_token: int | DecodeBytes,
    host_decode_tokens_per_s: float,
    host_bandwidth_gb_s: float,
    profiles: Iterable[DeviceProfile],
    threads: int,
    host_cache_bytes: int | None = None,
) -> dict[str, Any]:
    """Decode tokens/s estimates for ``profiles``, calibrated on this host: report.json's
    "device_estimates" (keys in docs/device_results.md). ``threads``: what the host's .pte decode ran
    with (the bandwidth must be measured with the same). ``host_cache_bytes``: the host's last-level
    cache, read from sysfs when None."""
    breakdown = bytes_per_token if isinstance(bytes_per_token, DecodeBytes) else None
    total = breakdown.total if breakdown else int(bytes_per_token)
    if total <= 0 or host_decode_tokens_per_s <= 0 or host_bandwidth_gb_s <= 0:
        raise EdgeqatError(
            f"cannot estimate from bytes_per_token={total}, host decode {host_decode_tokens_per_s} tokens/s, "
            f"host bandwidth {host_bandwidth_gb_s} GB/s: all must be positive"
        )
    cache_bytes = host_cache_bytes if host_cache_bytes is not None else host_last_level_cache_bytes()
    achieved = total * host_decode_tokens_per_s / 1e9
    efficiency = achieved / host_bandwidth_gb_s
    doubts = _host_doubts(total, efficiency, cache_bytes)
    resident = breakdown.pte_bytes + breakdown.kv_cache_bytes if breakdown else None
    return {
        "label": "estimate",
        "note": "Estimated from memory bandwidth, not measured; measured numbers come from the demo apps.",
        "method": (
            "decode tokens/s = device usable bandwidth x host efficiency / bytes per token, where host "
            "efficiency = bytes per token x host decode tokens/s / host measured read bandwidth; equivalently "
            "the host's speed scaled by the bandwidth ratio. Device usable bandwidth is "
            f"{ASSUMED_USABLE_BANDWIDTH_FRACTION:.0%} of the theoretical peak unless the profile gives a "
            f"measured figure. The app is assumed to run {threads} threads on the device's big cores."
        ),
        "threads": threads,
        "bytes_per_token": total,
        "bytes_per_token_breakdown": breakdown.as_dict() if breakdown else None,
        "host": {
            "decode_tokens_per_s": round(host_decode_tokens_per_s, 2),
            "bandwidth_gb_s": round(host_bandwidth_gb_s, 2),
            "achieved_gb_s": round(achieved, 3),
            "efficiency": round(efficiency, 4),
            "last_level_cache_bytes": cache_bytes,
        },
        "assumed_usable_bandwidth_fraction": ASSUMED_USABLE_BANDWIDTH_FRACTION,
        "confidence": "low" if doubts else "medium",
        "why": "; ".join(doubts) or None,
        "devices": [_device_row(p, total, efficiency, threads, doubts, resident) for p in profiles],
    }
