"""Typed configs for every stage, loadable from YAML, with "did you mean" for misspelt keys.

Every field declares its range next to its default (``setting``); ``validate`` checks types and ranges
of the whole config before any stage starts, so a bad value is one line up front rather than garbage or
a crash minutes later.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeqat.errors import EdgeqatError
from edgeqat.paths import DEFAULT

MODES = ("qat", "bf16", "ptq")
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
FAKE_QUANT_KERNELS = ("auto", "fused", "torchao")
# LoRA-QAT: "merged" fake-quantizes W + s·B·A, the weight that ships; "base" fake-quantizes W alone and adds the
# float adapter (Unsloth's and torchtune's way, kept to compare: its adapter's corrections are lost at the merge)
LORA_FAKE_QUANT = ("merged", "base")  # auto: fused on CUDA, torchao's eager quantizers elsewhere
# transformers' schedulers that need no extra arguments (its SchedulerType; importing it here costs seconds)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "warmup_stable_decay")
DEVICES = ("auto", "cpu", "cuda")
LAYER_DEBUG = ("on_failure", "always", "never")
REFERENCE_DEVICES = ("auto", "cpu", "cuda")
# `edgeqat study`'s QAT arms: the config as given, then with range learning, distillation from the baseline, or both
STUDY_ARMS = ("qat", "qat-range", "qat-distill", "qat-range-distill")
EMBEDDING_BITS = (0, 4, 8)  # 0 (or null): the token embedding stays float
SEED_LIMIT = 2**32  # numpy's seeds, which transformers' set_seed also sets
PHONE_THREADS = 8  # the most cores a phone's CPU has: a thread count any host may be asked to emulate


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, min: float | None = None,
            max: float | None = None, above: float | None = None, below: float | None = None,
            choices: tuple | None = None, nonempty: bool = False, min_items: int | None = None) -> Any:
    """A config field with its allowed range: ``min``/``max`` inclusive, ``above``/``below`` exclusive,
    ``choices``, ``nonempty`` (a string, or each string of a list), ``min_items`` (of a list)."""
    rules = {k: v for k, v in (("min", min), ("max", max), ("above", above), ("below", below), ("choices", choices),
                               ("min_items", min_items)) if v is not None}
    if nonempty:
        rules["nonempty"] = True
    return field(default=default, default_factory=factory, metadata={"rules": rules})


@dataclass
class QuantConfig:
    scheme: str = setting("8da4w", nonempty=True)  # a name of the scheme registry (checked in validate)
    group_size: int | None = setting(None, min=0)  # None: the scheme's default; 0: per-channel
    # The token embedding, weight-only: 4 (int4, the linears' group size, 32 when they are per-channel), 8 (int8,
    # the linears' group size) or 0 (float). 4 by default: a float embedding was 65 % of a Qwen3-0.6B .pte.
    embedding_bits: int | None = setting(4, choices=EMBEDDING_BITS)
    skip_indivisible: bool = False  # leave layers the group size does not divide in float, with a warning
    # QAT learns the linears' weight scales (torchao's range learning; train.range_learning_rate) instead of
    # taking each group's absmax at every step; convert quantizes with the learned scales. None (auto): on for
    # LoRA-QAT, off for full fine-tuning, as measured (docs/study.md)
    range_learning: bool | None = None


@dataclass
class TrainConfig:
    model: str = setting(DEFAULT, nonempty=True)  # hub id, local folder, or "default"
    dataset: str = setting(DEFAULT, nonempty=True)  # hub id, local .jsonl/.json/.parquet/.txt file or folder, or "default"
    text_column: str = setting("text", nonempty=True)
    dataset_split: str = setting("train", nonempty=True)  # of a hub dataset or dataset folder, e.g. train_sft
    mode: str = setting("qat", choices=MODES)  # qat | bf16 (plain fine-tune) | ptq (plain fine-tune, then post-training quantization)
    lora_rank: int = setting(0, min=0)  # 0: full fine-tuning
    lora_alpha: int = setting(16, min=1)
    lora_fake_quant: str = setting("merged", choices=LORA_FAKE_QUANT)  # QAT with LoRA: see LORA_FAKE_QUANT
    # Distillation: the loss adds distill_weight · T² · KL(teacher ‖ student) on the logits (0: off). The teacher
    # is a hub id or folder; "" means the model being fine-tuned, as loaded (in `edgeqat study`: the bf16 fine-tune).
    # the learned scales' own AdamW rate (quant.range_learning); None (auto): 1e-4 with LoRA, 1e-5 for full fine-tuning
    range_learning_rate: float | None = setting(None, above=0, max=1)
    # QAT: optimizer steps fine-tuned without fake quantization before it is turned on (0: from the start)
    fake_quant_after_steps: int = setting(0, min=0)
    distill_weight: float = setting(0.0, min=0)
    distill_temperature: float = setting(1.0, above=0)
    # the SFT cross-entropy's weight beside the KL term when distilling: 1 adds the KL term to the SFT loss,
    # 0 trains on the teacher's distributions alone
    distill_ce_weight: float = setting(1.0, min=0)
    teacher: str = ""
    max_steps: int = setting(120, min=1)
    batch_size: int = setting(8, min=1)
    gradient_accumulation_steps: int = setting(1, min=1)
    learning_rate: float = setting(3e-4, above=0, max=1)  # AdamW diverges far below 1
    max_length: int = setting(256, min=2)  # a training row needs a token to predict after its first
    lr_scheduler: str = setting("cosine", choices=LR_SCHEDULERS)  # any of transformers' schedulers: cosine | linear | ...
    warmup_ratio: float = setting(0.05, min=0, below=1)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    packing: bool = False  # TRL packs rows into max_length sequences (see attn_implementation)
    # sdpa | eager | flash_attention_2 | flash_attention_3. With a flash kernel, packing is padding-free
    # (best-fit decreasing, no attention across rows); otherwise rows are concatenated and cut ("wrapped"),
    # because padding-free batches fall back to slow masked attention in sdpa (measured 2.4x slower on an H100).
    attn_implementation: str = setting("sdpa", choices=ATTENTION)
    assistant_only_loss: bool = False  # chat data: loss on the assistant's turns only
    save_steps: int = setting(0, min=0)  # 0: no intermediate checkpoints; N: a resumable checkpoint every N optimizer steps
    # checkpoints kept while training: at least 2, so that a complete one always survives a crash mid-save
    save_total_limit: int = setting(2, min=2)
    logging_steps: int = setting(0, min=0)  # 0: max_steps / 20
    # QAT's fake quantization: "fused" (edgeqat's kernels, torchao's numerics, ~no extra memory), "torchao"
    # (its eager quantizers), or "auto" (fused on CUDA). Layers the fused path does not cover use torchao.
    fake_quant_kernels: str = setting("auto", choices=FAKE_QUANT_KERNELS)
    seed: int = setting(0, min=0, max=SEED_LIMIT - 1)
    device: str = setting("auto", choices=DEVICES)  # auto | cpu | cuda


EXPORT_FORMATS = ["pte", "onnx"]


@dataclass
class ExportConfig:
    max_seq_len: int = setting(256, min=2)
    golden_prompts: list[str] = setting(
        factory=lambda: ["A wise son maketh", "The fear of the LORD is", "Better is a little"], min_items=1, nonempty=True
    )
    golden_new_tokens: int = setting(24, min=1)
    # Processes for XNNPACK's preprocessing of the delegate subgraphs; 0: one per core. The .pte is the same
    # whatever the count (tests/test_export_ops.py), so a bundle is not re-exported when only this changes.
    lowering_workers: int = setting(0, min=0)
    # Programs in the bundle: the .pte always (the apps and the manifest are built on it), and an ONNX model
    # for ONNX Runtime from the same weights (docs/onnx.md).
    formats: list[str] = setting(factory=lambda: ["pte"], min_items=1, choices=EXPORT_FORMATS)
    # ONNX Runtime's MatMulNBits accuracy_level: 4 quantizes activations to int8 (the nearest to 8da4w/8da8w),
    # 1 keeps them float32 (docs/onnx.md measures both).
    onnx_accuracy_level: int = setting(4, choices=[0, 1, 2, 3, 4])


@dataclass
class Thresholds:
    min_logits_cosine: float = setting(0.99, min=-1, max=1)  # .pte vs eager converted model, mean over held-out positions
    min_top1_agreement: float = setting(0.95, min=0, max=1)  # .pte vs eager converted model
    max_perplexity_increase: float = setting(0.02, min=0)  # .pte vs eager converted model, relative
    min_golden_token_agreement: float = setting(0.9, min=0, max=1)  # share of golden greedy tokens the .pte reproduces


@dataclass
class CheckConfig:
    eval_dataset: str = setting(DEFAULT, nonempty=True)  # held-out text; "default" is the embedded held-out set
    eval_windows: int = setting(8, min=1)
    decode_tokens: int = setting(32, min=1)
    # ExecuTorch's thread pool for the .pte's timing: a phone's big cores. At most a phone's cores or the
    # host's, whichever is more: more threads than both only thrash.
    threads: int = setting(4, min=1, max=max(PHONE_THREADS, os.cpu_count() or 1))
    reference_device: str = setting("auto", choices=REFERENCE_DEVICES)  # GPU references on cuda when present; cpu: never
    prompts: list[str] = setting(factory=list, nonempty=True)  # more prompts to generate side by side (besides golden)
    layer_debug: str = setting("on_failure", choices=LAYER_DEBUG)  # per-layer .pte vs eager comparison
    device_profiles: str = ""  # YAML of extra device profiles for the decode estimates (docs/device_results.md)
    thresholds: Thresholds = field(default_factory=Thresholds)


@dataclass
class StudyConfig:
    arms: list[str] = setting(factory=lambda: ["qat"], min_items=1, choices=STUDY_ARMS)  # QAT arms beside bf16 and PTQ
    seeds: list[int] = setting(factory=list, min=0, max=SEED_LIMIT - 1)  # the whole study once per seed; []: train.seed
    eval_windows: int = setting(64, min=1)  # held-out windows of train.max_length tokens for perplexity (check.eval_dataset)
    lm_eval_tasks: list[str] = setting(factory=list, nonempty=True)  # lm-eval harness tasks (needs `pip install lm-eval`)
    lm_eval_include_path: str = ""  # a folder of your own lm-eval task YAML files (offline or custom tasks)
    lm_eval_limit: int = setting(0, min=0)  # 0: every example of each task
    lm_eval_batch_size: int = setting(8, min=1)


@dataclass
class RunConfig:
    output_dir: str = setting("edgeqat-out", nonempty=True)
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


def shown(value: Any, limit: int = 60) -> str:
    """A value for an error line: its repr, shortened so that the line's point stays visible."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({type(value).__name__}, {len(text)} chars)"


def _coerce(value, hint, where: str):
    """Checks a value against its annotation; YAML's ints are accepted for floats."""
    if typing.get_origin(hint) is list:  # get_args(list[str]) is (str,): the item type, not alternatives
        if not isinstance(value, list):
            raise EdgeqatError(f"config key {where}: expected a list, got {shown(value)}")
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
    raise EdgeqatError(f"config key {where}: expected {names}, got {shown(value)}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Reads a YAML file (or nothing: the defaults) and applies dotted overrides like {'train.max_steps': 5}."""
    from edgeqat.yaml_file import load_yaml

    data: dict[str, Any] = {}
    if path is not None:
        data = load_yaml(path, "config file")
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise EdgeqatError(f"{path}: the top level must be a mapping of sections (train:, quant:, ...), "
                               f"not a {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise EdgeqatError(f"config section {p!r} must be a mapping, got {shown(node)}")
        node[leaf] = value
    config = _build(RunConfig, data, "")
    validate(config)
    return config


def _rule_problem(name: str, value: Any, rules: dict[str, Any]) -> str | None:
    """What is wrong with one field's value under its rules (None: nothing)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    if isinstance(value, list):
        if len(value) < rules.get("min_items", 0):
            return f"{name} must list at least {rules['min_items']} item{'s' if rules['min_items'] > 1 else ''}"
        empty = [i for i, item in enumerate(value) if rules.get("nonempty") and not str(item).strip()]
        if empty:
            return f"{name}[{empty[0]}] is empty; give it some text"
        item_rules = {k: v for k, v in rules.items() if k in ("choices", "min", "max")}
        if item_rules:  # a list of choices or numbers: each item within them, each once
            for i, item in enumerate(value):
                problem = _rule_problem(f"{name}[{i}]", item, item_rules)
                if problem:
                    return problem
            twice = [item for i, item in enumerate(value) if item in value[:i]]
            if twice:
                return f"{name} lists {shown(twice[0])} twice"
        return None
    if value is None:
        return None
    if "choices" in rules and value not in rules["choices"]:
        choices = [str(c) for c in rules["choices"]]
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.8) if isinstance(value, str) else []
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of: {', '.join(choices)}"
        return f"unknown {name} {shown(value)}; {hint}"
    if rules.get("nonempty") and isinstance(value, str) and not value.strip():
        return f"{name} is empty; give a value"
    for rule, fails, says in (("min", lambda v, r: v < r, "at least"), ("max", lambda v, r: v > r, "at most"),
                              ("above", lambda v, r: v <= r, "more than"), ("below", lambda v, r: v >= r, "less than")):
        if rule in rules and fails(value, rules[rule]):
            return f"{name} must be {says} {rules[rule]}, got {value}"
    return None


def _check_fields(config: Any, where: str) -> None:
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            _check_fields(value, name)
        elif problem := _rule_problem(name, value, f.metadata.get("rules", {})):
            raise EdgeqatError(problem)


def validate(config: RunConfig) -> None:
    """Types and ranges of every field, then what depends on more than one field or on the disk."""
    from edgeqat.schemes import get_scheme

    _check_fields(config, "")
    get_scheme(config.quant.scheme)
    if config.check.device_profiles:
        from edgeqat.runtime_check.device_profiles import load_profiles

        load_profiles(config.check.device_profiles)  # read now, not after minutes of training and export
    _check_local_sources(config)


def _check_local_sources(config: RunConfig) -> None:
    """Model and dataset names that are local paths must exist (and be of the right kind) before any stage."""
    from edgeqat.paths import resolve_source

    resolve_source(config.train.model, Path(), "model path", folder_only=True)
    resolve_source(config.train.dataset, Path(), "dataset")
    resolve_source(config.check.eval_dataset, Path(), "evaluation dataset")


# The automatic range-learning settings (docs/study.md, measured on the GPU machine): with LoRA the learned scales
# lift merged LoRA-QAT from 10-40 % to about 100 % of PTQ's loss recovered, at a scale rate of 1e-4; with full
# fine-tuning they are level with absmax scales within the seed spread, best at 1e-5.
LORA_RANGE_LEARNING_RATE, FULL_RANGE_LEARNING_RATE = 1e-4, 1e-5


def with_auto_settings(config: RunConfig) -> RunConfig:
    """``config`` with its automatic settings (None) made concrete: range learning on for LoRA-QAT and off
    otherwise, and its learning rate by LoRA or full fine-tuning. Training resolves them before it records its
    config, so a checkpoint holds what it was trained with."""
    quant, train = config.quant, config.train
    if quant.range_learning is None:
        quant = dataclasses.replace(quant, range_learning=train.mode == "qat" and train.lora_rank > 0)
    if train.range_learning_rate is None:
        rate = LORA_RANGE_LEARNING_RATE if train.lora_rank else FULL_RANGE_LEARNING_RATE
        train = dataclasses.replace(train, range_learning_rate=rate)
    return dataclasses.replace(config, quant=quant, train=train)


def group_size_of(quant: QuantConfig) -> int:
    from edgeqat.schemes import get_scheme

    return get_scheme(quant.scheme).default_group_size if quant.group_size is None else quant.group_size


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls, data: dict[str, Any]):
    return _build(cls, data, "")
