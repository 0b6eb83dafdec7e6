"""What does QAT cost per training step? bf16 vs fake-quantized steps of one model, on one device, in one run.

    python benchmarks/qat_overhead.py --preset qwen3-0.6b --batch 8 --seq-len 1024      # on a GPU
    python benchmarks/qat_overhead.py --model default --device cpu --batch 2 --seq-len 64 --steps 2

For full fine-tuning and LoRA (r16), times the plain bf16 step and the QAT step of each scheme, once with
torchao's eager fake quantizers and once with edgeqat's fused ones (the two `train.fake_quant_kernels`):
forward, backward and AdamW on random tokens, after warm-up steps. LoRA-QAT runs each
``--lora-fake-quant`` way: ``merged`` fake-quantizes W + s·B·A (edgeqat's default, what ships), ``base`` W alone. Prints a table (seconds per step,
tokens/s, ratio to bf16, peak memory) and writes it as JSON. ``--profile DIR`` also writes, per run, the
PyTorch profiler's table of where two steps spend their time.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shaped_model import SHAPES, build_model  # noqa: E402

from edgeqat.artifacts import versions, write_json_atomic  # noqa: E402
from edgeqat.config import QuantConfig  # noqa: E402
from edgeqat.train.finetune import _add_lora  # noqa: E402
from edgeqat.train.host_overhead import calling_thread_backward  # noqa: E402
from edgeqat.train.lora_qat import use_merged_lora_qat  # noqa: E402
from edgeqat.train.quantize import initialize_range_learning, learned_scale_parameters, prepare_qat  # noqa: E402

GIB = 1024**3


def _load(args, device: torch.device, dtype: torch.dtype):
    if args.preset:
        return build_model(args.preset, dtype, str(device))
    from edgeqat.train.model_loading import load_model_and_tokenizer

    return load_model_and_tokenizer(args.model, dtype, device)[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profile(step, out: Path, name: str, device: torch.device) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            step()
        _sync(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.txt").write_text(prof.key_averages().table(sort_by=sort, row_limit=40))


def time_steps(args, device: torch.device, fine_tuning: str, scheme: str | None, kernels: str | None,
               lora_fake_quant: str | None = None) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = _load(args, device, dtype)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if scheme:
        prepare_qat(model, QuantConfig(scheme=scheme, range_learning=args.range_learning), fused=kernels == "fused")
        if args.range_learning:
            initialize_range_learning(model, device)
    if fine_tuning == "lora":
        model = _add_lora(model, 16, 16)
        if scheme and lora_fake_quant == "merged":
            use_merged_lora_qat(model)
        if scheme and args.range_learning:
            learned_scale_parameters(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    vocab = model.config.vocab_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    batch = torch.randint(0, vocab, (args.batch, args.seq_len), generator=generator).to(device)

    def step():
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The backward runs where `edgeqat train` runs it (on the calling thread, see train/host_overhead.py),
    # unless --worker-thread-backward asks for autograd's default.
    with calling_thread_backward(device if not args.worker_thread_backward else torch.device("cpu")):
        for _ in range(args.warmup):
            step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        _sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    if args.profile:
        name = f"{fine_tuning}-{scheme or 'bf16'}-{kernels or 'none'}" + (f"-{lora_fake_quant}" if lora_fake_quant else "")
        _profile(step, args.profile, name, device)
    return {
        "fine_tuning": fine_tuning,
        "run": scheme or "bf16",
        "kernels": kernels,
        "lora_fake_quant": lora_fake_quant,
        "s_per_step": seconds,
        "tokens_per_s": args.batch * args.seq_len / seconds,
        "peak_gib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", choices=sorted(SHAPES), help="a config-built model of this shape")
    source.add_argument("--model", help="hub id or local folder ('default': the embedded model)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--fine-tuning", default="full,lora", help="full,lora")
    parser.add_argument("--schemes", default="8da4w,4w")
    parser.add_argument("--kernels", default="torchao,fused", help="fake-quant kernels to time: torchao,fused")
    parser.add_argument("--lora-fake-quant", default="merged,base", help="LoRA-QAT ways to time: merged,base")
    parser.add_argument("--range-learning", action="store_true", help="QAT runs learn their weight scales")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--worker-thread-backward", action="store_true",
                        help="run CUDA backward passes on autograd's worker thread (its default), not the calling thread")
    parser.add_argument("--profile", type=Path, help="write the profiler's table of each run into this folder")
    parser.add_argument("--json", type=Path, default=Path("qat_overhead.json"))
    args = parser.parse_args()
    device = torch.device(args.device)

    rows = []
    for fine_tuning in args.fine_tuning.split(","):
        base = None
        ways = args.lora_fake_quant.split(",") if fine_tuning == "lora" else [None]
        runs = [(None, None, None)] + [(s, k, w) for s in args.schemes.split(",") for k in args.kernels.split(",")
                                       for w in ways]
        for scheme, kernels, way in runs:
            row = time_steps(args, device, fine_tuning, scheme, kernels, way)
            gc.collect()  # the model and optimizer of that run go before the next one is built
            if device.type == "cuda":
                torch.cuda.empty_cache()
            base = base or row
            row["ratio"] = row["s_per_step"] / base["s_per_step"]
            row["extra_peak_gib"] = None if row["peak_gib"] is None else row["peak_gib"] - base["peak_gib"]
            rows.append(row)
            print(f"  {fine_tuning:5} {row['run']:6} {kernels or '':8} {way or '':6} {row['s_per_step']:.4f} s/step",
                  file=sys.stderr, flush=True)

    name = args.preset or args.model
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{name}, batch {args.batch} x {args.seq_len} tokens, AdamW, {args.steps} timed steps after {args.warmup}, "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
          f"range learning {'on' if args.range_learning else 'off'}, "
          f"backward on the {'worker' if args.worker_thread_backward else 'calling'} thread, {gpu}\n")
    print("| fine-tuning | run | fake quant | LoRA fake-quantizes | s/step | tokens/s | × bf16 | peak GiB | + GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        peak = "-" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        extra = "-" if r["extra_peak_gib"] is None else f"{r['extra_peak_gib']:+.1f}"
        print(f"| {r['fine_tuning']} | {r['run']} | {r['kernels'] or '-'} | {r['lora_fake_quant'] or '-'} | {r['s_per_step']:.3f} | "
              f"{r['tokens_per_s']:,.0f} | {r['ratio']:.2f} | {peak} | {extra} |")
    # output paths by name only: the file records no folder of the machine that made it
    recorded = {k: v.name if isinstance(v, Path) else str(v) for k, v in vars(args).items()}
    write_json_atomic(args.json, {"model": name, "device": gpu, "args": recorded,
                                  "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
