"""Typed configs for every stage, loadable from YAML, with "did you mean" for misspelt keys."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeqat.errors import EdgeqatError

DEFAULT = "default"  # names the embedded model / dataset shipped in edgeqat/assets
MODES = ("qat", "bf16", "ptq")
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
FAKE_QUANT_KERNELS = ("auto", "fused", "torchao")  # auto: fused on CUDA, torchao's eager quantizers elsewhere
# transformers' schedulers that need no extra arguments (its SchedulerType; importing it here costs seconds)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "warmup_stable_decay")


@dataclass
class QuantConfig:
    scheme: str = "8da4w"
    group_size: int | None = None  # None: the scheme's default; 0: per-channel
    embedding_bits: int | None = None  # 4 or 8 quantizes the token embedding too
    skip_indivisible: bool = False  # leave layers the group size does not divide in float, with a warning


@dataclass
class TrainConfig:
    model: str = DEFAULT  # hub id, local folder, or "default"
    dataset: str = DEFAULT  # hub id, local .jsonl/.json/.parquet/.txt file or folder, or "default"
    text_column: str = "text"
    dataset_split: str = "train"  # of a hub dataset or dataset folder, e.g. train_sft
    mode: str = "qat"  # qat | bf16 (plain fine-tune) | ptq (plain fine-tune, then post-training quantization)
    lora_rank: int = 0  # 0: full fine-tuning
    lora_alpha: int = 16
    max_steps: int = 120
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-4
    max_length: int = 256
    lr_scheduler: str = "cosine"  # any of transformers' schedulers: cosine | linear | constant_with_warmup | ...
    warmup_ratio: float = 0.05
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    packing: bool = False  # TRL packs rows into max_length sequences (see attn_implementation)
    # sdpa | eager | flash_attention_2 | flash_attention_3. With a flash kernel, packing is padding-free
    # (best-fit decreasing, no attention across rows); otherwise rows are concatenated and cut ("wrapped"),
    # because padding-free batches fall back to slow masked attention in sdpa (measured 2.4x slower on an H100).
    attn_implementation: str = "sdpa"
    assistant_only_loss: bool = False  # chat data: loss on the assistant's turns only
    save_steps: int = 0  # 0: no intermediate checkpoints; N: a resumable checkpoint every N optimizer steps
    save_total_limit: int = 2  # checkpoints kept while training (at least 2, so a complete one always survives)
    logging_steps: int = 0  # 0: max_steps / 20
    # QAT's fake quantization: "fused" (edgeqat's kernels, torchao's numerics, ~no extra memory), "torchao"
    # (its eager quantizers), or "auto" (fused on CUDA). Layers the fused path does not cover use torchao.
    fake_quant_kernels: str = "auto"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class ExportConfig:
    max_seq_len: int = 256
    golden_prompts: list[str] = field(
        default_factory=lambda: ["A wise son maketh", "The fear of the LORD is", "Better is a little"]
    )
    golden_new_tokens: int = 24


@dataclass
class Thresholds:
    min_logits_cosine: float = 0.99  # .pte vs eager converted model, mean over held-out positions
    min_top1_agreement: float = 0.95  # .pte vs eager converted model
    max_perplexity_increase: float = 0.02  # .pte vs eager converted model, relative
    min_golden_token_agreement: float = 0.9  # share of golden greedy tokens the .pte reproduces


LAYER_DEBUG = ("on_failure", "always", "never")
REFERENCE_DEVICES = ("auto", "cpu", "cuda")


@dataclass
class CheckConfig:
    eval_dataset: str = DEFAULT  # held-out text; "default" is the embedded held-out set
    eval_windows: int = 8
    decode_tokens: int = 32
    threads: int = 4  # ExecuTorch's thread pool for the .pte's timing: a phone's big cores
    reference_device: str = "auto"  # GPU references (converted, unquantized) on cuda when present; cpu: never
    prompts: list[str] = field(default_factory=list)  # more prompts to generate side by side (besides golden)
    layer_debug: str = "on_failure"  # per-layer .pte vs eager comparison: on_failure | always | never
    device_profiles: str = ""  # YAML of extra device profiles for the decode estimates (docs/device_results.md)
    thresholds: Thresholds = field(default_factory=Thresholds)


@dataclass
class StudyConfig:
    eval_windows: int = 64  # held-out windows of train.max_length tokens for perplexity (check.eval_dataset)
    lm_eval_tasks: list[str] = field(default_factory=list)  # lm-eval harness tasks (needs `pip install lm-eval`)
    lm_eval_include_path: str = ""  # a folder of your own lm-eval task YAML files (offline or custom tasks)
    lm_eval_limit: int = 0  # 0: every example of each task
    lm_eval_batch_size: int = 8


@dataclass
class RunConfig:
    output_dir: str = "edgeqat-out"
    quant: QuantConfig = field(default_factory=QuantConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise EdgeqatError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise EdgeqatError(f"unknown config key {where + '.' if where else ''}{key}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.{key}" if where else key)
        else:
            kwargs[key] = _coerce(value, hint, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _coerce(value, hint, where: str):
    """Checks a value against its annotation; YAML's ints are accepted for floats."""
    if typing.get_origin(hint) is list:  # get_args(list[str]) is (str,): the item type, not alternatives
        if not isinstance(value, list):
            raise EdgeqatError(f"config key {where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        origin = typing.get_origin(t) or t
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str):
            try:  # PyYAML reads 1e-4 (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if origin is int and isinstance(value, bool):
            continue
        if isinstance(origin, type) and isinstance(value, origin):
            return value
    names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise EdgeqatError(f"config key {where}: expected {names}, got {value!r}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Reads a YAML file (or nothing: the defaults) and applies dotted overrides like {'train.max_steps': 5}."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise EdgeqatError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise EdgeqatError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
        if not isinstance(data, dict):
            raise EdgeqatError(f"{path}: the top level must be a mapping of sections (train:, quant:, ...)")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise EdgeqatError(f"config section {p!r} must be a mapping, got {node!r}")
        node[leaf] = value
    config = _build(RunConfig, data, "")
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    from edgeqat.schemes import EMBEDDING_BITS, get_scheme

    get_scheme(config.quant.scheme)
    if config.train.mode not in MODES:
        raise EdgeqatError(f"unknown mode {config.train.mode!r}; choose one of: {', '.join(MODES)}")
    if config.quant.group_size is not None and config.quant.group_size < 0:
        raise EdgeqatError(f"group size must be positive or 0 (per-channel), got {config.quant.group_size}")
    if config.quant.embedding_bits is not None and config.quant.embedding_bits not in EMBEDDING_BITS:
        raise EdgeqatError(f"embedding bits must be one of {EMBEDDING_BITS}, got {config.quant.embedding_bits}")
    if config.train.device not in ("auto", "cpu", "cuda"):
        raise EdgeqatError(f"device must be auto, cpu or cuda, got {config.train.device!r}")
    for name in ("max_steps", "batch_size", "max_length", "gradient_accumulation_steps"):
        if getattr(config.train, name) < 1:
            raise EdgeqatError(f"train.{name} must be at least 1")
    for name in ("save_steps", "logging_steps", "lora_rank"):
        if getattr(config.train, name) < 0:
            raise EdgeqatError(f"train.{name} must be 0 or more")
    if config.train.save_total_limit < 2:
        raise EdgeqatError("train.save_total_limit must be at least 2, so that a complete checkpoint survives a crash")
    if not 0 <= config.train.warmup_ratio < 1:
        raise EdgeqatError(f"train.warmup_ratio must be in [0, 1), got {config.train.warmup_ratio}")
    _check_scheduler(config.train.lr_scheduler)
    if config.train.attn_implementation not in ATTENTION:
        raise EdgeqatError(f"train.attn_implementation must be one of {', '.join(ATTENTION)}, got {config.train.attn_implementation!r}")
    if config.train.fake_quant_kernels not in FAKE_QUANT_KERNELS:
        raise EdgeqatError(f"train.fake_quant_kernels must be one of {', '.join(FAKE_QUANT_KERNELS)}, "
                           f"got {config.train.fake_quant_kernels!r}")
    if config.check.threads < 1 or config.check.eval_windows < 1 or config.check.decode_tokens < 1:
        raise EdgeqatError("check.threads, check.eval_windows and check.decode_tokens must be at least 1")
    if config.check.layer_debug not in LAYER_DEBUG:
        raise EdgeqatError(f"check.layer_debug must be one of {', '.join(LAYER_DEBUG)}, got {config.check.layer_debug!r}")
    if config.check.reference_device not in REFERENCE_DEVICES:
        raise EdgeqatError(f"check.reference_device must be one of {', '.join(REFERENCE_DEVICES)}, "
                           f"got {config.check.reference_device!r}")
    if config.check.device_profiles and not Path(config.check.device_profiles).is_file():
        raise EdgeqatError(f"device profiles file not found: {config.check.device_profiles}")
    if config.study.eval_windows < 1:
        raise EdgeqatError("study.eval_windows must be at least 1")
    if config.export.max_seq_len < 2:
        raise EdgeqatError("export.max_seq_len must be at least 2")


def _check_scheduler(name: str) -> None:
    if name not in LR_SCHEDULERS:
        close = difflib.get_close_matches(name, LR_SCHEDULERS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of: {', '.join(LR_SCHEDULERS)}"
        raise EdgeqatError(f"unknown train.lr_scheduler {name!r}; {hint}")


def group_size_of(quant: QuantConfig) -> int:
    from edgeqat.schemes import get_scheme

    return get_scheme(quant.scheme).default_group_size if quant.group_size is None else quant.group_size


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls, data: dict[str, Any]):
    return _build(cls, data, "")
