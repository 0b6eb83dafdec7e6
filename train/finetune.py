"""`edgeqat train`: fine-tune a causal LM with TRL's SFTTrainer, with or without QAT, into a checkpoint folder.

``mode`` picks the run: ``qat`` fake-quantizes during training; ``bf16`` is the plain fine-tune (the
reference); ``ptq`` is the same plain fine-tune, marked so that `convert` applies post-training
quantization. Baseline vs PTQ vs QAT is therefore three runs of one command.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import safetensors.torch
import torch

from edgeqat.artifacts import atomic_dir, read_record, write_record, write_text_atomic
from edgeqat.config import RunConfig, group_size_of, to_dict, with_auto_settings
from edgeqat.errors import EdgeqatError
from edgeqat.ownership import RECORD, check_output
from edgeqat.paths import DEFAULT_TRAIN_DATA, local_path, portable_train_config
from edgeqat.train.checkpointing import (
    MarkCompleteCheckpoints,
    barrier,
    checkpoint_step,
    drop_progress_without_checkpoints,
    ensure_progress_is_ours,
    finish_progress,
    progress_dir,
    start_progress,
)
from edgeqat.train.data import load_text_dataset
from edgeqat.train.distillation import check_teacher, distilling_trainer_class
from edgeqat.train.fake_quant_delay import FakeQuantAfterSteps
from edgeqat.train.fused_head_qat import fake_quantize_fused_head
from edgeqat.train.host_overhead import calling_thread_backward
from edgeqat.train.lora_qat import use_merged_lora_qat
from edgeqat.train.memory_estimate import GIB, check_fits
from edgeqat.train.model_loading import (
    is_main_process,
    load_config_checked,
    load_model,
    load_tokenizer,
    model_skeleton,
    resolve_device,
    world_size,
)
from edgeqat.train.quantize import (
    LEARNED_SCALES,
    check_quantizable,
    count_fake_quantized,
    initialize_range_learning,
    learned_scale_parameters,
    learned_scales,
    prepare_qat,
    strip_fake_quant,
    wants_fused,
)
from edgeqat.train.train_log import TRAIN_LOG, ThroughputLog, quiet_trainer_output, read_train_log, steady_state

log = logging.getLogger("edgeqat")
STAGE = "train"


def stage_config(config: RunConfig, checkpoint_dir: str | Path) -> dict:
    """The part of the run config this stage's output depends on (with a distillation teacher that is an
    edgeqat artifact, its files: a retrained teacher makes a different student); local model, dataset and
    teacher paths relative to the checkpoint's folder, as it records them."""
    config = with_auto_settings(config)
    stage = {"train": portable_train_config(to_dict(config.train), checkpoint_dir), "quant": to_dict(config.quant)}
    teacher = local_path(teacher_name(config.train)) if config.train.distill_weight else None
    if teacher is not None and (teacher / RECORD).is_file():
        stage["teacher_files"] = read_record(teacher).get("files")
    return stage


def teacher_name(tc) -> str | None:
    """The distillation teacher's hub id or folder, or None without distillation."""
    return (tc.teacher or tc.model) if tc.distill_weight else None


def _add_lora(model, rank: int, alpha: int):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _sft_config(config: RunConfig, output_dir: Path, device: torch.device, dtype: torch.dtype):
    from trl import SFTConfig

    tc = config.train
    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=tc.max_steps,
        per_device_train_batch_size=tc.batch_size,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        learning_rate=tc.learning_rate,
        lr_scheduler_type=tc.lr_scheduler,
        warmup_steps=max(1, round(tc.max_steps * tc.warmup_ratio)) if tc.warmup_ratio else 0,
        max_length=tc.max_length,
        packing=tc.packing,
        packing_strategy="bfd" if tc.attn_implementation.startswith("flash") else "wrapped",
        assistant_only_loss=tc.assistant_only_loss,
        gradient_checkpointing=tc.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if tc.gradient_checkpointing else None,
        seed=tc.seed,
        data_seed=tc.seed,
        logging_steps=tc.logging_steps or max(1, tc.max_steps // 20),
        save_strategy="steps" if tc.save_steps else "no",
        save_steps=tc.save_steps or 500,
        save_total_limit=tc.save_total_limit,
        report_to=["tensorboard"] if importlib.util.find_spec("tensorboard") else "none",
        include_num_input_tokens_seen="non_padding",
        bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        disable_tqdm=not sys.stderr.isatty(),
    )


def _check_chat_data(dataset, tokenizer, model_name: str) -> None:
    if "messages" in dataset.column_names and not tokenizer.chat_template:
        raise EdgeqatError(
            f"the dataset is chat data (a 'messages' column) but the tokenizer of {model_name!r} has no chat "
            "template; use the model's instruct variant, or plain text rows"
        )


def train(config: RunConfig, output_dir: str | Path, resume: bool = False) -> Path:
    """Fine-tunes into ``output_dir``; under torchrun/accelerate every rank calls it and rank 0 writes."""
    config = with_auto_settings(config)
    tc = config.train
    output_dir = Path(output_dir)
    main = is_main_process()
    # before the work, not after it: nothing of the user's is ever replaced
    teacher = teacher_name(tc)
    check_output(output_dir, STAGE, {"--model": local_path(tc.model), "--dataset": local_path(tc.dataset),
                                     "--teacher": local_path(teacher) if teacher else None})
    ensure_progress_is_ours(output_dir)
    device = resolve_device(tc.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # bf16 training on CPU is slow and lossy
    torch.manual_seed(tc.seed)
    # A wrong model, a group size that does not fit it, or a model too big for the device fails here:
    # before any data or weights load.
    _, model_config = load_config_checked(tc.model)
    skeleton = model_skeleton(model_config, tc.model)
    if tc.mode != "bf16":
        check_quantizable(skeleton, config.quant, warn=lambda message: None)
    if config.quant.range_learning and tc.mode != "qat":
        raise EdgeqatError(f"range learning trains QAT's weight scales, and a {tc.mode!r} run has none: "
                           "use --mode qat, or drop --range-learning")
    if tc.fake_quant_after_steps and (tc.mode != "qat" or tc.fake_quant_after_steps >= tc.max_steps):
        why = f"a {tc.mode!r} run has no fake quantization" if tc.mode != "qat" else \
            f"the run has {tc.max_steps} steps, so fake quantization would never start"
        raise EdgeqatError(f"--fake-quant-after-steps {tc.fake_quant_after_steps}: {why}; lower it or drop it")
    if tc.distill_ce_weight != 1.0 and not tc.distill_weight:
        raise EdgeqatError(f"--distill-ce-weight {tc.distill_ce_weight:g} weighs the cross-entropy beside a distillation "
                           "term, and this run does not distil: add --distill-weight W, or drop --distill-ce-weight")
    teacher_skeleton = None
    if teacher:
        _, teacher_config = load_config_checked(teacher)
        check_teacher(teacher_config, model_config, teacher)
        teacher_skeleton = model_skeleton(teacher_config, teacher)
    estimate = check_fits(skeleton, dtype, device, bool(tc.lora_rank), teacher_skeleton)
    del skeleton, teacher_skeleton
    dataset = load_text_dataset(tc.dataset, DEFAULT_TRAIN_DATA, tc.text_column, tc.dataset_split)
    tokenizer = load_tokenizer(tc.model)
    _check_chat_data(dataset, tokenizer, tc.model)

    progress = progress_dir(output_dir)
    args = _sft_config(config, progress, device, dtype)
    _ = args.device  # sets up the process group under torchrun/accelerate, so that barrier() below synchronizes
    resume_from = start_progress(output_dir, stage_config(config, output_dir), resume, main)
    try:
        barrier()
        return _train(config, output_dir, args, dataset, tokenizer, device=device, dtype=dtype,
                      resume_from=resume_from, memory_floor=estimate)
    except BaseException:
        if main:
            drop_progress_without_checkpoints(output_dir)  # keep what --resume can use, nothing else
        raise


def _train(config: RunConfig, output_dir: Path, args, dataset, tokenizer, *, device, dtype, resume_from, memory_floor) -> Path:
    """The training itself, once every input has been checked and the progress folder is ready."""
    from trl import SFTTrainer

    tc = config.train
    main = is_main_process()
    progress = progress_dir(output_dir)
    teacher = teacher_name(tc)
    # the teacher first: it is the model as loaded, before any fake quantization or adapters
    teacher_model = load_model(teacher, dtype, device, tc.attn_implementation).eval().requires_grad_(False) if teacher else None
    model = load_model(tc.model, dtype, device, tc.attn_implementation)
    if tc.mode == "qat":
        fused = wants_fused(tc.fake_quant_kernels, device)
        prepare_qat(model, config.quant, fused=fused)
        if main:
            log.info("QAT: %d modules fake-quantized with %s (%s kernels)", count_fake_quantized(model),
                     config.quant.scheme, "fused" if fused else "torchao")
        if config.quant.range_learning:
            learned = initialize_range_learning(model, device)
            if main:
                log.info("range learning: %d linears learn their weight scales (learning rate %g)", learned,
                         tc.range_learning_rate)
    if tc.lora_rank:
        model = _add_lora(model, tc.lora_rank, tc.lora_alpha)
        if tc.mode == "qat" and tc.lora_fake_quant == "merged":
            merged = use_merged_lora_qat(model)
            if main:
                log.info("LoRA-QAT: %d adapted linears fake-quantize their merged weight W + s·B·A", merged)
    optimizers = (_optimizer_with_learned_scales(model, args, tc, device), None) if config.quant.range_learning else (None, None)

    log_file = progress / TRAIN_LOG
    if resume_from is not None and main:
        _truncate_log(log_file, checkpoint_step(resume_from))
    throughput = ThroughputLog(log_file, device)
    trainer = (distilling_trainer_class() if teacher_model is not None else SFTTrainer)(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[throughput, MarkCompleteCheckpoints(),
                   *([FakeQuantAfterSteps(model, tc.fake_quant_after_steps)] if tc.fake_quant_after_steps else [])],
        optimizers=optimizers,
    )
    quiet_trainer_output(trainer)
    if tc.mode == "qat":  # TRL's fused LM head reads the output layer's weight itself (train/fused_head_qat.py)
        fake_quantize_fused_head(model.get_base_model() if tc.lora_rank else model)
    if teacher_model is not None:
        trainer.teacher, trainer.distill_weight, trainer.distill_temperature = teacher_model, tc.distill_weight, tc.distill_temperature
        trainer.distill_ce_weight = tc.distill_ce_weight
        if main:
            log.info("distilling from %s: loss %g · CE + %g · T² · KL(teacher ‖ student), T = %g", teacher,
                     tc.distill_ce_weight, tc.distill_weight, tc.distill_temperature)
    if tc.fake_quant_after_steps and main:
        log.info("QAT starts after %d steps without fake quantization", tc.fake_quant_after_steps)
    callbacks = trainer.callback_handler.callbacks  # first, so TensorBoard sees the fields it adds
    callbacks.insert(0, callbacks.pop(callbacks.index(throughput)))
    if main:
        log.info(
            "training %s (%s) on %d x %s, global batch %d x %d tokens, %d steps; memory floor %.1f GiB",
            tc.model, tc.mode, world_size(), device.type, tc.batch_size * tc.gradient_accumulation_steps * world_size(),
            tc.max_length, tc.max_steps, memory_floor / GIB,
        )
    start = time.perf_counter()
    with calling_thread_backward(device):
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    history = trainer.state.log_history
    losses = [(e["step"], e["loss"]) for e in history if "loss" in e]
    tokens = trainer.state.num_input_tokens_seen
    steady = steady_state(read_train_log(log_file))  # our callback's fields are in the log file, not log_history

    model = trainer.accelerator.unwrap_model(trainer.model)
    if tc.lora_rank:
        model = model.merge_and_unload()  # merged-weight LoRA-QAT layers write the very weight they trained on
    scales = learned_scales(model) if config.quant.range_learning else None
    strip_fake_quant(model)
    _check_finite(model, losses)
    if main:
        with atomic_dir(output_dir, STAGE) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            if scales is not None:  # convert quantizes with these (train/quantize.py)
                safetensors.torch.save_file(scales, tmp / LEARNED_SCALES)
            tokenizer.save_pretrained(tmp)
            if log_file.is_file():
                shutil.copyfile(log_file, tmp / TRAIN_LOG)
            if (progress / "runs").is_dir():  # TensorBoard's event files, when it is installed
                shutil.copytree(progress / "runs", tmp / "tensorboard")
            write_record(
                tmp,
                STAGE,
                stage_config(config, output_dir),
                mode=tc.mode,
                scheme=config.quant.scheme,
                group_size=group_size_of(config.quant),
                device=device.type,
                gpus=world_size() if device.type == "cuda" else 0,
                gpu_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                resumed_from_step=checkpoint_step(resume_from) if resume_from else None,
                train_seconds=round(seconds, 2),
                tokens_seen=tokens,
                tokens_per_s=steady["tokens_per_s"],  # steady state: start-up and the first interval left out
                step_seconds=steady["step_seconds"],
                peak_gpu_memory_gib=round(peak / GIB, 3) if peak is not None else None,
                final_loss=losses[-1][1] if losses else None,
                loss_curve=losses,
            )
        finish_progress(output_dir)
        log.info("trained %s (%s) in %.0f s, final loss %.3f -> %s", tc.model, tc.mode, seconds, losses[-1][1] if losses else float("nan"), output_dir)
    barrier()  # the other ranks go on only once the artifact is in place
    return output_dir


def _optimizer_with_learned_scales(model, args, tc, device):
    """The Trainer's AdamW (same betas, eps, weight decay), with the learned scales at their own learning rate."""
    scales = learned_scale_parameters(model)
    ids = {id(p) for p in scales}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": others, "lr": tc.learning_rate}, {"params": scales, "lr": tc.range_learning_rate, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                             weight_decay=args.weight_decay, fused=device.type == "cuda")


def _check_finite(model, losses: list) -> None:
    """A run that diverged (a learning rate too high) leaves NaN or infinite weights: never save those."""
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        last = f"; the last logged loss was {losses[-1][1]}" if losses else ""
        raise EdgeqatError(f"training diverged: {len(broken)} weight tensors hold NaN or infinity (first: {broken[0]}"
                           f"{last}); lower --learning-rate and run again (nothing was written)")


def _truncate_log(path: Path, step: int) -> None:
    """Drops log lines of the steps after the checkpoint: they are about to be trained again."""
    rows = [r for r in read_train_log(path) if r["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
