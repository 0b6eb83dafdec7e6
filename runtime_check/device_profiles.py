"""Phones and boards that `edgeqat check` estimates decode speed for: what their memory can deliver.

Bandwidths are theoretical peaks (transfer rate x bus width), the only figure the vendors (sometimes)
publish; ``source`` says where each number comes from and how sure it is. A YAML file adds profiles or
replaces built-in ones by name (``load_profiles``); its format is in docs/device_results.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgeqat.errors import EdgeqatError
from edgeqat.yaml_file import load_yaml


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    soc: str
    memory_bandwidth_gb_s: float  # theoretical peak, GB/s (1e9 bytes/s)
    big_cores: int  # prime + performance cores: where XNNPACK's threads should run
    cores: int
    ram_gib: float
    source: str
    # Other names a device reports for itself (Android Build.MODEL, iOS hw.machine, codenames).
    aliases: tuple[str, ...] = ()
    # A measured read bandwidth (e.g. a STREAM-style run on the device), when someone has one; it
    # replaces the assumed share of the peak in the estimate.
    measured_bandwidth_gb_s: float | None = None

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def matches(self, reported: str) -> bool:
        """Whether a device that calls itself ``reported`` is this one (case and spacing ignored)."""
        return normalize_name(reported) in {normalize_name(n) for n in self.names()}


def normalize_name(name: str) -> str:
    return " ".join(name.lower().split())


def _lpddr(rate_mt_s: int, bus_bits: int) -> float:
    """Peak GB/s of a DRAM interface: transfers per second x bytes per transfer."""
    return round(rate_mt_s * 1e6 * bus_bits / 8 / 1e9, 1)


BUILTIN_PROFILES: tuple[DeviceProfile, ...] = (
    DeviceProfile(
        name="Google Pixel 8 Pro",
        soc="Google Tensor G3",
        memory_bandwidth_gb_s=_lpddr(8533, 64),
        big_cores=5,  # 1x Cortex-X3 + 4x Cortex-A715 (+ 4x A510)
        cores=9,
        ram_gib=12,
        source=(
            "Google states LPDDR5X but no data rate; 8533 MT/s (the fastest LPDDR5X of its generation) on a "
            "64-bit bus is assumed: 8533e6 x 8 B = 68.3 GB/s, not a confirmed figure"
        ),
        aliases=("Pixel 8 Pro", "husky"),
    ),
    DeviceProfile(
        name="Google Pixel 9 Pro",
        soc="Google Tensor G4",
        memory_bandwidth_gb_s=_lpddr(8533, 64),
        big_cores=4,  # 1x Cortex-X4 + 3x Cortex-A720 (+ 4x A520)
        cores=8,
        ram_gib=16,
        source=(
            "Google states LPDDR5X but no data rate; 8533 MT/s on a 64-bit bus is assumed: "
            "8533e6 x 8 B = 68.3 GB/s, not a confirmed figure"
        ),
        aliases=("Pixel 9 Pro", "caiman", "Pixel 9 Pro XL", "komodo"),
    ),
    DeviceProfile(
        name="Apple iPhone 15 Pro",
        soc="Apple A17 Pro",
        memory_bandwidth_gb_s=_lpddr(6400, 64),
        big_cores=2,  # 2 performance + 4 efficiency cores
        cores=6,
        ram_gib=8,
        source=(
            "Apple publishes no memory specification; LPDDR5-6400 on a 64-bit bus as reported by "
            "teardowns: 6400e6 x 8 B = 51.2 GB/s"
        ),
        aliases=("iPhone 15 Pro", "iPhone16,1", "iPhone 15 Pro Max", "iPhone16,2"),
    ),
    DeviceProfile(
        name="Apple iPhone 16 Pro",
        soc="Apple A18 Pro",
        memory_bandwidth_gb_s=_lpddr(7500, 64),
        big_cores=2,  # 2 performance + 4 efficiency cores
        cores=6,
        ram_gib=8,
        source=(
            "Apple publishes no memory specification; LPDDR5X-7500 on a 64-bit bus as reported by "
            "teardowns: 7500e6 x 8 B = 60.0 GB/s"
        ),
        aliases=("iPhone 16 Pro", "iPhone17,1", "iPhone 16 Pro Max", "iPhone17,2"),
    ),
    DeviceProfile(
        name="Samsung Galaxy S24 (Snapdragon 8 Gen 3)",
        soc="Qualcomm Snapdragon 8 Gen 3 for Galaxy",
        memory_bandwidth_gb_s=_lpddr(9600, 64),
        big_cores=6,  # 1x Cortex-X4 + 5x Cortex-A720 (+ 2x A520)
        cores=8,
        ram_gib=8,
        source=(
            "Qualcomm's specification: LPDDR5X up to 4800 MHz (9600 MT/s), 4x16-bit channels: "
            "9600e6 x 8 B = 76.8 GB/s, the SoC's maximum (the phone's DRAM may run slower)"
        ),
        # Only the Snapdragon models: SM-S921B/N carry an Exynos 2400 and must not match this profile.
        aliases=("Galaxy S24", "SM-S921U", "SM-S921U1", "SM-S921W", "SM-S9210"),
    ),
    DeviceProfile(
        name="Raspberry Pi 5",
        soc="Broadcom BCM2712",
        memory_bandwidth_gb_s=_lpddr(4267, 32),
        big_cores=4,  # 4x Cortex-A76
        cores=4,
        ram_gib=8,
        source=(
            "Raspberry Pi 5 product brief: LPDDR4X-4267 on a 32-bit bus: 4267e6 x 4 B = 17.1 GB/s "
            "(8 GB model; 2, 4 and 16 GB exist)"
        ),
        aliases=("Raspberry Pi 5 Model B",),
    ),
)

_REQUIRED = ("name", "soc", "memory_bandwidth_gb_s", "big_cores", "cores", "ram_gib", "source")
_KNOWN = tuple(f.name for f in fields(DeviceProfile))


def _profile_from_yaml(entry: Any, where: str) -> DeviceProfile:
    if not isinstance(entry, dict):
        raise EdgeqatError(f"{where}: expected a mapping with keys {', '.join(_REQUIRED)}")
    unknown = sorted(set(entry) - set(_KNOWN))
    if unknown:
        raise EdgeqatError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(_KNOWN)}")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise EdgeqatError(f"{where}: missing {missing[0]!r}; every profile needs {', '.join(_REQUIRED)}")
    for key in ("name", "soc", "source"):
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise EdgeqatError(f"{where}.{key}: expected a non-empty string, got {entry[key]!r}")
    for key in ("memory_bandwidth_gb_s", "ram_gib", "measured_bandwidth_gb_s"):
        value = entry.get(key)
        if key == "measured_bandwidth_gb_s" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise EdgeqatError(f"{where}.{key}: expected a positive number, got {value!r}")
    for key in ("big_cores", "cores"):
        if isinstance(entry[key], bool) or not isinstance(entry[key], int) or entry[key] < 1:
            raise EdgeqatError(f"{where}.{key}: expected a whole number of at least 1, got {entry[key]!r}")
    if entry["big_cores"] > entry["cores"]:
        raise EdgeqatError(f"{where}: big_cores ({entry['big_cores']}) is more than cores ({entry['cores']})")
    aliases = entry.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
        raise EdgeqatError(f"{where}.aliases: expected a list of non-empty strings, got {aliases!r}")
    return DeviceProfile(**{**entry, "aliases": tuple(aliases)})


def _check_unambiguous(profiles: list[DeviceProfile], path: Path) -> None:
    """Each name or alias may belong to one profile only, or a device could match two rows."""
    owner: dict[str, str] = {}
    for profile in profiles:
        for name in profile.names():
            key = normalize_name(name)
            if key in owner and owner[key] != profile.name:
                raise EdgeqatError(
                    f"{path}: {name!r} names both {owner[key]!r} and {profile.name!r}; give each device its own names"
                )
            owner[key] = profile.name


def load_profiles(path: str | Path | None = None) -> list[DeviceProfile]:
    """The built-in profiles, with those of the YAML file at ``path`` added (or replacing a built-in one
    of the same name); ``include_builtin: false`` in the file keeps only the file's own."""
    builtin = list(BUILTIN_PROFILES)
    if path is None:
        return builtin
    path = Path(path)
    data = load_yaml(path, "device profiles file")
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), list) or not data["profiles"]:
        raise EdgeqatError(f"{path}: expected a mapping with a non-empty list under 'profiles:' (see docs/device_results.md)")
    unknown = sorted(set(data) - {"profiles", "include_builtin"})
    if unknown:
        raise EdgeqatError(f"{path}: unknown top-level key {unknown[0]!r}; the keys are profiles, include_builtin")
    include_builtin = data.get("include_builtin", True)
    if not isinstance(include_builtin, bool):
        raise EdgeqatError(f"{path}: include_builtin must be true or false, got {include_builtin!r}")
    added = [_profile_from_yaml(e, f"{path}: profiles[{i}]") for i, e in enumerate(data["profiles"])]
    by_name: dict[str, DeviceProfile] = {}
    for profile in added:
        if normalize_name(profile.name) in by_name:
            raise EdgeqatError(f"{path}: the profile {profile.name!r} appears twice")
        by_name[normalize_name(profile.name)] = profile
    # A replacement keeps its built-in's place in the table; new profiles follow.
    replaced = [by_name.pop(normalize_name(p.name), p) for p in builtin] if include_builtin else []
    profiles = replaced + list(by_name.values())
    _check_unambiguous(profiles, path)
    return profiles
