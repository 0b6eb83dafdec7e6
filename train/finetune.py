"""`edgeqat train`: fine-tune a causal LM with TRL's SFTTrainer, with or without QAT, into a checkpoint folder.

``mode`` picks the run: ``qat`` fake-quantizes during training; ``bf16`` is the plain fine-tune (the
reference); ``ptq`` is the same plain fine-tune, marked so that `convert` applies post-training
quantization. Baseline vs PTQ vs QAT is therefore three runs of one command.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from edgeqat.artifacts import atomic_dir, ensure_replaceable, write_record
from edgeqat.config import RunConfig, group_size_of, to_dict
from edgeqat.paths import DEFAULT_TRAIN_DATA
from edgeqat.train.data import load_text_dataset
from edgeqat.train.model_loading import load_config_checked, load_model_and_tokenizer, model_skeleton, resolve_device
from edgeqat.train.quantize import check_quantizable, count_fake_quantized, prepare_qat, strip_fake_quant

log = logging.getLogger("edgeqat")
STAGE = "train"


def stage_config(config: RunConfig) -> dict:
    """The part of the run config this stage's output depends on."""
    return {"train": to_dict(config.train), "quant": to_dict(config.quant)}


def _add_lora(model, rank: int, alpha: int):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def train(config: RunConfig, output_dir: str | Path) -> Path:
    from trl import SFTConfig, SFTTrainer

    tc = config.train
    output_dir = Path(output_dir)
    ensure_replaceable(output_dir, STAGE)  # before the work, not after it
    device = resolve_device(tc.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # bf16 training on CPU is slow and lossy
    torch.manual_seed(tc.seed)
    # A wrong model, or a group size that does not fit it, fails here: before any data or weights load.
    _, model_config = load_config_checked(tc.model)
    if tc.mode != "bf16":
        check_quantizable(model_skeleton(model_config), config.quant, warn=lambda message: None)
    dataset = load_text_dataset(tc.dataset, DEFAULT_TRAIN_DATA, tc.text_column)
    model, tokenizer = load_model_and_tokenizer(tc.model, dtype, device)

    if tc.mode == "qat":
        prepare_qat(model, config.quant)
        log.info("QAT: %d modules fake-quantized with %s", count_fake_quantized(model), config.quant.scheme)
    if tc.lora_rank:
        model = _add_lora(model, tc.lora_rank, tc.lora_alpha)

    with tempfile.TemporaryDirectory(prefix="edgeqat-trainer-") as scratch:
        args = SFTConfig(
            output_dir=scratch,
            max_steps=tc.max_steps,
            per_device_train_batch_size=tc.batch_size,
            gradient_accumulation_steps=tc.gradient_accumulation_steps,
            learning_rate=tc.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, tc.max_steps // 20),
            max_length=tc.max_length,
            seed=tc.seed,
            logging_steps=max(1, tc.max_steps // 20),
            save_strategy="no",
            report_to="none",
            bf16=dtype == torch.bfloat16,
            use_cpu=device.type == "cpu",
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        start = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - start
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]

    model = trainer.model
    if tc.lora_rank:
        model = model.merge_and_unload()
    strip_fake_quant(model)
    with atomic_dir(output_dir, STAGE) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_record(
            tmp,
            STAGE,
            stage_config(config),
            mode=tc.mode,
            scheme=config.quant.scheme,
            group_size=group_size_of(config.quant),
            device=device.type,
            train_seconds=round(seconds, 2),
            train_loss=round(result.training_loss, 4),
            loss_curve=losses,
        )
    log.info("trained %s (%s) in %.0f s, final loss %.3f -> %s", tc.model, tc.mode, seconds, result.training_loss, output_dir)
    return output_dir
