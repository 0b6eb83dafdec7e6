"""Device estimates: bytes per decode step, host bandwidth, the calibration, and the device profiles."""

from __future__ import annotations

import struct
import time

import pytest
import torch

from edgeqat.errors import EdgeqatError
from edgeqat.runtime_check.device_estimate import (
    DecodeBytes,
    decode_bytes_per_token,
    estimate_devices,
    measure_host_bandwidth,
    pte_data_bytes,
)
from edgeqat.runtime_check.device_profiles import BUILTIN_PROFILES, DeviceProfile, load_profiles

MIB = 1 << 20
# The embedded default model's config.json, as far as the estimate reads it.
DEFAULT_MODEL_CONFIG = {
    "vocab_size": 2048,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 32,
}
# Data of the 8da4w default-model .pte (group 32, float embedding): from its extended header.
DEFAULT_PTE_DATA = 4_231_424


def profile(name="Phone", bandwidth=50.0, big=4, cores=8, ram=8.0, **extra) -> DeviceProfile:
    return DeviceProfile(name, "SoC", bandwidth, big, cores, ram, "test figure", **extra)


# --- bytes per token -------------------------------------------------------------------------------


def test_bytes_per_token_of_the_default_model_with_a_float_embedding():
    b = decode_bytes_per_token(DEFAULT_PTE_DATA, DEFAULT_MODEL_CONFIG, None, context_tokens=64)
    assert b.embedding_table_bytes == 2048 * 256 * 4 == 2_097_152  # what the .pte's largest constant is
    assert b.embedding_row_bytes == 1024
    assert b.kv_cache_bytes == 2 * 4 * 4 * 32 * 64 * 4 == 262_144
    assert b.total == 4_231_424 - 2_097_152 + 1024 + 262_144 == 2_397_440
    assert b.as_dict() == {
        "pte_bytes": 4_231_424,
        "embedding_table_bytes": 2_097_152,
        "embedding_row_bytes": 1024,
        "kv_cache_bytes": 262_144,
        "context_tokens": 64,
        "bytes_per_token": 2_397_440,
    }


@pytest.mark.parametrize(
    "bits, table, row",
    [
        # Sizes measured on real exports of a 2048 x 256 embedding with group 32: int8 or packed int4
        # weights plus one float32 scale per group of 32.
        (8, 524_288 + 65_536, 256 + 8 * 4),
        (4, 262_144 + 65_536, 128 + 8 * 4),
    ],
)
def test_quantized_embedding_is_left_out_but_for_one_row(bits, table, row):
    b = decode_bytes_per_token(3_000_000, DEFAULT_MODEL_CONFIG, bits, 64, embedding_group_size=32)
    assert (b.embedding_table_bytes, b.embedding_row_bytes) == (table, row)
    assert b.total == 3_000_000 - table + row + 262_144


def test_a_tied_table_stored_once_is_read_as_the_output_layer_and_only_its_scales_are_left_out():
    # The default bundle: 2048 x 256 int4 (262,144 bytes, also the output layer's weights) + float32 scales.
    b = decode_bytes_per_token(2_200_000, DEFAULT_MODEL_CONFIG, 4, 64, embedding_group_size=32,
                               bytes_stored_once=262_144)
    assert b.embedding_table_bytes == 65_536
    assert b.total == 2_200_000 - 65_536 + (128 + 8 * 4) + 262_144
    with pytest.raises(EdgeqatError, match="not part of the embedding table"):
        decode_bytes_per_token(2_200_000, DEFAULT_MODEL_CONFIG, 4, 64, embedding_group_size=32,
                               bytes_stored_once=400_000)


def test_kv_cache_grows_with_context_and_defaults_come_from_the_heads():
    config = {"vocab_size": 1000, "hidden_size": 512, "num_hidden_layers": 2, "num_attention_heads": 8}
    short = decode_bytes_per_token(10_000_000, config, None, 100)
    long = decode_bytes_per_token(10_000_000, config, None, 200)
    # head_dim = 512 / 8 = 64 and kv_heads = the 8 attention heads when the config names neither
    assert short.kv_cache_bytes == 2 * 2 * 8 * 64 * 100 * 4
    assert long.total - short.total == short.kv_cache_bytes


@pytest.mark.parametrize(
    "pte_bytes, config, bits, match",
    [
        (4_000_000, {k: v for k, v in DEFAULT_MODEL_CONFIG.items() if k != "hidden_size"}, None, "hidden_size"),
        (1_000_000, DEFAULT_MODEL_CONFIG, None, "does not describe this program"),
        (4_000_000, DEFAULT_MODEL_CONFIG, 2, "embedding_bits"),
    ],
)
def test_bytes_per_token_refuses_what_cannot_be_this_program(pte_bytes, config, bits, match):
    with pytest.raises(EdgeqatError, match=match):
        decode_bytes_per_token(pte_bytes, config, bits, 64)


def test_pte_data_bytes_reads_the_extended_header(tmp_path):
    program, data = 1000, 5000
    header = b"\0" * 4 + b"ET12" + b"eh00" + struct.pack("<I", 32) + struct.pack("<QQQ", program, 1024, data)
    pte = tmp_path / "model.pte"
    pte.write_bytes(header + b"\0" * (1024 + data - len(header)))
    assert pte_data_bytes(pte) == data
    plain = tmp_path / "plain.pte"
    plain.write_bytes(b"\0" * 4 + b"ET12" + b"\0" * 100)  # no extended header: all of it
    assert pte_data_bytes(plain) == 108


# --- host bandwidth --------------------------------------------------------------------------------


def test_host_bandwidth_is_plausible_fast_and_leaves_torch_threads_alone():
    before = torch.get_num_threads()
    start = time.perf_counter()
    gb_s = measure_host_bandwidth(threads=1)
    elapsed = time.perf_counter() - start
    assert 0.5 < gb_s < 2000  # from a Raspberry Pi to an HBM server
    assert elapsed < 4  # ~0.5 s alone; slack for the shared 2-core test machine
    assert torch.get_num_threads() == before


# --- calibration and confidence --------------------------------------------------------------------


def test_calibration_scales_the_host_speed_by_usable_bandwidth():
    bytes_per_token = 100 * MIB  # beyond any cache: a memory-bound decode
    est = estimate_devices(bytes_per_token, 50.0, 10.0, [profile(bandwidth=50.0)], threads=4, host_cache_bytes=32 * MIB)
    achieved = 100 * MIB * 50 / 1e9
    assert est["label"] == "estimate"
    assert est["host"]["achieved_gb_s"] == pytest.approx(achieved, abs=1e-3)
    assert est["host"]["efficiency"] == pytest.approx(achieved / 10.0, abs=1e-4)
    assert est["confidence"] == "medium" and est["why"] is None
    (row,) = est["devices"]
    usable = 50.0 * 0.6
    assert row["usable_bandwidth_gb_s"] == pytest.approx(usable)
    assert row["tokens_per_s"] == pytest.approx(usable * 1e9 * (achieved / 10.0) / (100 * MIB), abs=0.1)
    assert row["tokens_per_s"] == pytest.approx(50.0 * usable / 10.0, abs=0.1)  # = host speed x bandwidth ratio
    assert row["bandwidth_bound_tokens_per_s"] == pytest.approx(usable * 1e9 / (100 * MIB), abs=0.1)
    assert row["label"] == "estimate" and row["confidence"] == "medium" and row["why"] is None
    assert row["measured"] is None


def test_a_measured_device_bandwidth_replaces_the_assumed_share():
    est = estimate_devices(100 * MIB, 50.0, 10.0, [profile(measured_bandwidth_gb_s=20.0)], 4, host_cache_bytes=0)
    (row,) = est["devices"]
    assert row["usable_bandwidth_gb_s"] == 20.0 and "measured" in row["bandwidth_basis"]
    assert row["tokens_per_s"] == pytest.approx(100.0, abs=0.1)


def test_a_model_that_fits_in_cache_gets_a_low_confidence_estimate():
    b = decode_bytes_per_token(DEFAULT_PTE_DATA, DEFAULT_MODEL_CONFIG, None, 64)
    est = estimate_devices(b, 564.4, 17.0, list(BUILTIN_PROFILES), threads=2, host_cache_bytes=32 * MIB)
    assert est["confidence"] == "low"
    assert "last-level cache" in est["why"] and "per-token overhead" in est["why"]  # efficiency is ~8%
    assert all(row["confidence"] == "low" for row in est["devices"])
    assert est["bytes_per_token"] == 2_397_440 and est["bytes_per_token_breakdown"] == b.as_dict()


def test_a_small_working_set_is_low_confidence_even_on_a_host_with_a_small_cache():
    est = estimate_devices(8 * MIB, 2000.0, 20.0, [profile()], 4, host_cache_bytes=4 * MIB)
    assert est["confidence"] == "low" and "phone SoC" in est["why"]


def test_faster_than_dram_means_cache_and_low_confidence():
    est = estimate_devices(100 * MIB, 500.0, 10.0, [profile()], 4, host_cache_bytes=32 * MIB)
    assert est["host"]["efficiency"] > 1
    assert est["confidence"] == "low" and "from cache" in est["why"]


def test_device_caveats_lower_only_that_device():
    b = DecodeBytes(pte_bytes=3 << 30, embedding_table_bytes=MIB, embedding_row_bytes=4096,
                    kv_cache_bytes=MIB, context_tokens=64)
    phones = [profile("Big", big=6, ram=12), profile("Few big cores", big=2, ram=12), profile("Small RAM", big=6, ram=4)]
    est = estimate_devices(b, 2.0, 10.0, phones, threads=4, host_cache_bytes=32 * MIB)  # 64% efficiency
    assert est["confidence"] == "medium"
    big, few, small = est["devices"]
    assert big["confidence"] == "medium"
    assert few["confidence"] == "low" and "big cores" in few["why"]
    assert small["confidence"] == "low" and "RAM" in small["why"]


def test_estimate_refuses_nonsense_inputs():
    with pytest.raises(EdgeqatError, match="positive"):
        estimate_devices(100 * MIB, 0.0, 10.0, [profile()], 4, host_cache_bytes=0)


# --- profiles --------------------------------------------------------------------------------------


def test_builtin_profiles_cover_the_promised_devices_with_sources():
    socs = " | ".join(p.soc for p in BUILTIN_PROFILES)
    for needed in ("Tensor G3", "A17 Pro", "A18 Pro", "Snapdragon 8 Gen 3", "BCM2712"):
        assert needed in socs
    for p in BUILTIN_PROFILES:
        assert p.source and 1 <= p.big_cores <= p.cores and p.memory_bandwidth_gb_s > 0
    pi = next(p for p in BUILTIN_PROFILES if p.name == "Raspberry Pi 5")
    assert pi.memory_bandwidth_gb_s == pytest.approx(4267e6 * 4 / 1e9, abs=0.05)
    assert load_profiles() == list(BUILTIN_PROFILES)
    assert next(p for p in BUILTIN_PROFILES if p.matches("HUSKY")).soc == "Google Tensor G3"


GOOD_YAML = """
profiles:
  - name: Google Pixel 8 Pro
    soc: Google Tensor G3
    memory_bandwidth_gb_s: 51.2
    big_cores: 5
    cores: 9
    ram_gib: 12
    source: my measurement
    aliases: [husky, Pixel 8 Pro]
  - name: Nothing Phone (2)
    soc: Snapdragon 8+ Gen 1
    memory_bandwidth_gb_s: 51.2
    big_cores: 4
    cores: 8
    ram_gib: 12
    source: spec sheet
    measured_bandwidth_gb_s: 30
"""


def test_yaml_profiles_replace_in_place_and_add(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(GOOD_YAML)
    profiles = load_profiles(path)
    assert [p.name for p in profiles] == [p.name for p in BUILTIN_PROFILES] + ["Nothing Phone (2)"]
    pixel = profiles[0]
    assert pixel.name == "Google Pixel 8 Pro" and pixel.memory_bandwidth_gb_s == 51.2 and pixel.source == "my measurement"
    assert profiles[-1].measured_bandwidth_gb_s == 30 and profiles[-1].aliases == ()
    path.write_text("include_builtin: false\n" + GOOD_YAML)
    assert [p.name for p in load_profiles(path)] == ["Google Pixel 8 Pro", "Nothing Phone (2)"]


def _entry(**change) -> str:
    entry = {"name": "X", "soc": "S", "memory_bandwidth_gb_s": 10, "big_cores": 2, "cores": 4, "ram_gib": 4, "source": "s"}
    entry.update(change)
    lines = [f"    {k}: {v}" for k, v in entry.items() if v is not None]
    return "profiles:\n  -" + "\n".join(lines)[3:] + "\n"


@pytest.mark.parametrize(
    "text, match",
    [
        ("profiles: [\n", "not valid YAML at line"),
        ("- a list\n", "non-empty list under 'profiles:'"),
        ("profiles: []\n", "non-empty list"),
        ("profiles: [1]\n", r"profiles\[0\]: expected a mapping"),
        (_entry(source=None), r"profiles\[0\]: missing 'source'"),
        (_entry(memory_bandwidth_gb_s="fast"), r"profiles\[0\]\.memory_bandwidth_gb_s: expected a positive number"),
        (_entry(ram_gib=-1), "ram_gib: expected a positive number"),
        (_entry(cores=2.5), "cores: expected a whole number"),
        (_entry(big_cores=8), r"big_cores \(8\) is more than cores \(4\)"),
        (_entry(bandwith_gb_s=5), "unknown key 'bandwith_gb_s'"),
        (_entry(aliases="husky"), "aliases: expected a list"),
        (_entry(name="A", aliases="[husky]"), "'husky' names both"),
        (_entry() + "include_builtin: maybe\n", "include_builtin must be true or false"),
        (_entry() + "extra: 1\n", "unknown top-level key 'extra'"),
        (_entry() + _entry()[len("profiles:\n"):], "appears twice"),
    ],
)
def test_bad_yaml_profiles_are_one_line_errors(tmp_path, text, match):
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    with pytest.raises(EdgeqatError, match=match) as info:
        load_profiles(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_profiles_file(tmp_path):
    with pytest.raises(EdgeqatError, match="device profiles file not found"):
        load_profiles(tmp_path / "nope.yaml")
