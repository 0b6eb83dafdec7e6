"""`edgeqat convert`: a trained checkpoint -> a checkpoint with real quantized weights.

QAT checkpoints go through torchao's ``QATConfig(step="convert")``; PTQ checkpoints through the
scheme's base config; bf16 checkpoints are copied as float (the unquantized reference export).
Quantized tensors are saved with torchao's safetensors support and reload with `load_converted`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from edgeqat.artifacts import RECORD, atomic_dir, read_record, record_problem, verify_files, write_record
from edgeqat.config import QuantConfig, from_dict
from edgeqat.errors import EdgeqatError
from edgeqat.ownership import check_output
from edgeqat.paths import relative_path, require_folder
from edgeqat.schemes import embedding_bits_of
from edgeqat.train.quantize import LEARNED_SCALES, convert_qat, load_learned_scales, prepare_qat, quantize_ptq

log = logging.getLogger("edgeqat")
STAGE = "convert"
WEIGHTS = "model.safetensors"
ARTIFACT_NAMES = {"train": "checkpoint", "convert": "converted model"}
# What the later stages read from a train or convert record, beyond its stage, config and files.
STAGE_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "train": {"mode": str, "scheme": str, "group_size": int},
    "convert": {"mode": str, "quantized": bool, "scheme": str, "group_size": (int, type(None)),
                "embedding_bits": (int, type(None))},
}


def read_checked_record(folder: Path, stage: str) -> dict:
    """The artifact's record, after checking it is a ``stage`` artifact whose files are all intact."""
    folder = require_folder(folder, ARTIFACT_NAMES[stage], f"run `edgeqat {stage}` to make it first")
    record = read_record(folder)
    if record.get("stage") != stage:
        raise EdgeqatError(f"{folder} is a {record.get('stage')!r} artifact, expected a {stage!r} one")
    problems = verify_files(folder, record["files"])
    if problems:
        raise EdgeqatError(f"{folder} is damaged: {'; '.join(problems)}; run the {stage} stage again")
    problem = record_problem(record, STAGE_FIELDS[stage])
    if problem:
        raise EdgeqatError(f"{folder}/{RECORD} is damaged: {problem}; run the {stage} stage again")
    return record


def convert(checkpoint_dir: str | Path, output_dir: str | Path, mode: str | None = None) -> Path:
    """``mode`` "ptq" quantizes a plain (bf16) fine-tune after training; by default the checkpoint's own mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    check_output(output_dir, STAGE, {"checkpoint": checkpoint_dir})
    record = read_checked_record(checkpoint_dir, "train")
    mode = mode or record["mode"]
    if mode != record["mode"] and not (mode == "ptq" and record["mode"] == "bf16"):
        raise EdgeqatError(f"a {record['mode']!r} checkpoint cannot be converted as {mode!r}; only bf16 -> ptq is allowed")
    quant = from_dict(QuantConfig, record["config"]["quant"])
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    model.requires_grad_(False)
    if mode == "qat":
        prepare_qat(model, quant)
        if quant.range_learning:
            load_learned_scales(model, _read_learned_scales(checkpoint_dir))
        convert_qat(model, quant)
    elif mode == "ptq":
        quantize_ptq(model, quant)
    save_converted(model, tokenizer, output_dir, record, mode, checkpoint_dir)
    log.info("converted %s (%s, %s) -> %s", checkpoint_dir, mode, quant.scheme if mode != "bf16" else "float", output_dir)
    return output_dir


def _read_learned_scales(checkpoint_dir: Path) -> dict:
    import safetensors.torch

    path = checkpoint_dir / LEARNED_SCALES
    if not path.is_file():
        raise EdgeqatError(f"{checkpoint_dir} was trained with range learning but has no {LEARNED_SCALES}; train it again")
    return safetensors.torch.load_file(path)


def save_converted(model, tokenizer, output_dir: Path, train_record: dict, mode: str, checkpoint_dir: Path) -> None:
    import safetensors.torch
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    state = {k: v.contiguous() if type(v) is torch.Tensor else v for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False) and mode == "bf16":
        state.pop("lm_head.weight", None)  # tied: saved once, as the embedding
    tensors, metadata = flatten_tensor_state_dict(state)
    quantized = mode != "bf16"
    with atomic_dir(output_dir, STAGE) as tmp:
        safetensors.torch.save_file(tensors, tmp / WEIGHTS, metadata=metadata)
        model.config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_record(
            tmp,
            STAGE,
            converted_config(train_record, mode),
            mode=mode,
            quantized=quantized,
            scheme=train_record["scheme"] if quantized else "none",
            group_size=train_record["group_size"] if quantized else None,
            embedding_bits=embedding_bits_of(train_record["config"]["quant"]["embedding_bits"]) if quantized else None,
            source=relative_path(checkpoint_dir, output_dir),  # relative: no machine path
        )


def converted_config(train_record: dict, mode: str) -> dict:
    """What a converted artifact depends on: the checkpoint's files and config, and how it was quantized."""
    return {"checkpoint": train_record["files"], "train": train_record["config"], "mode": mode}


def model_to_load(config) -> torch.nn.Module:
    """The float32 model of ``config`` with its weights left uninitialised, for a checkpoint to replace every
    one (a missing weight is then an error). Initialising random weights took 9 to 15 s of loading a 0.6 B
    model; the buffers (rotary frequencies, embedding scales) are computed as usual."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()  # part of the initialisation skipped above: a tied output layer is the embedding again
    return model


def load_converted(folder: str | Path, record: dict | None = None):
    """(model, tokenizer, record) of a converted checkpoint; quantized tensors come back as torchao tensors.

    ``record`` is the folder's record when the caller has already verified it (read_checked_record).
    """
    import safetensors
    import safetensors.torch
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
    from transformers import AutoConfig, AutoTokenizer

    folder = Path(folder)
    record = record or read_checked_record(folder, STAGE)
    config = AutoConfig.from_pretrained(folder)
    model = model_to_load(config)
    tensors = safetensors.torch.load_file(folder / WEIGHTS)
    with safetensors.safe_open(folder / WEIGHTS, "pt") as f:
        metadata = f.metadata() or {}
    state, _ = unflatten_tensor_state_dict(tensors, metadata)
    if "lm_head.weight" not in state and getattr(config, "tie_word_embeddings", False):
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, assign=True, strict=False)
    if missing or unexpected:
        raise EdgeqatError(f"{folder}/{WEIGHTS} does not match its config.json (missing {missing}, unexpected {unexpected})")
    model.eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(folder), record
