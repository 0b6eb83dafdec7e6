"""Does a checkpoint's QAT train the integer codes that convert ships? Counted weight by weight.

    python benchmarks/fake_quant_codes.py runs/study/qat-checkpoint                  # scheme from its record
    python benchmarks/fake_quant_codes.py core/assets/default_model --scheme 8da4w   # any HF folder
    python benchmarks/fake_quant_codes.py CKPT --device cuda                         # adds CUDA autocast

Loads the checkpoint's weights in bf16 (how a CUDA run trains them), fake-quantizes every quantized linear
and the embedding the way training does, and compares each weight with what ``convert`` makes of the same
checkpoint (torchao on the CPU, fp32): edgeqat's quantizer (fp32, weight_fake_quant.py) must differ
nowhere; torchao's own bf16 quantizer, which edgeqat used before 2026-12-04, is shown beside it, eager
and (on CUDA) under the Trainer's bf16 autocast. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from edgeqat.artifacts import versions, write_json_atomic
from edgeqat.config import QuantConfig, from_dict, group_size_of
from edgeqat.train.quantize import convert_qat, prepare_qat


def _quant_config(folder: Path, args) -> QuantConfig:
    record = folder / "edgeqat.json"
    if args.scheme is None and record.is_file():
        return from_dict(QuantConfig, json.loads(record.read_text())["config"]["quant"])
    return QuantConfig(scheme=args.scheme or "8da4w", group_size=args.group_size, embedding_bits=args.embedding_bits)


def _fake_quantized(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    return {name: m for name, m in model.named_modules() if isinstance(m, (FakeQuantizedLinear, FakeQuantizedEmbedding))}


def _codes(value: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The integer code of each fake-quantized value, read against the shipped per-group scale (the trained
    scale is within a bf16 rounding of it, far less than half a step for |code| <= 128)."""
    group = value.shape[1] // scale.shape[1]
    return torch.round(value.float() / scale.float().repeat_interleave(group, dim=1))


def count(folder: Path, quant: QuantConfig, device: str) -> dict:
    from torchao.quantization.qat import IntxFakeQuantizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval().requires_grad_(False)
    shipped = copy.deepcopy(model)
    prepare_qat(shipped, quant)
    convert_qat(shipped, quant)
    shipped_weights = {name: m.weight for name, m in shipped.named_modules()
                       if hasattr(getattr(m, "weight", None), "qdata")}
    trained = model.to(device, torch.bfloat16)
    prepare_qat(trained, quant)
    ways = {"edgeqat (fp32)": (None, False), "torchao bf16": (IntxFakeQuantizer, False)}
    if device == "cuda":
        ways["torchao bf16, CUDA autocast"] = (IntxFakeQuantizer, True)
    codes = {way: 0 for way in ways}
    values = {way: 0 for way in ways}
    weights = 0
    for name, module in _fake_quantized(trained).items():
        target = shipped_weights[name]
        target_codes = (target.qdata.float() - target.zero_point.float().repeat_interleave(
            target.qdata.shape[1] // target.zero_point.shape[1], dim=1)).to(device)
        target_values = target.dequantize().to(device, torch.bfloat16)
        weights += target_values.numel()
        for way, (cls, autocast) in ways.items():
            quantizer = copy.deepcopy(module.weight_fake_quantizer)
            if cls is not None:
                quantizer.__class__ = cls
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                value = quantizer(module.weight)
            values[way] += (value.to(torch.bfloat16) != target_values).sum().item()
            codes[way] += (_codes(value, target.scale.to(device)) != target_codes).sum().item()
    return {"weights": weights, "codes_differ": {w: codes[w] / weights for w in ways},
            "values_differ": {w: values[w] / weights for w in ways}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--scheme", help="for a folder without an edgeqat record (default 8da4w)")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--embedding-bits", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=Path("fake_quant_codes.json"))
    args = parser.parse_args()

    rows = []
    for folder in args.checkpoints:
        quant = _quant_config(folder, args)
        rows.append({"checkpoint": "/".join(folder.parts[-3:]), "scheme": quant.scheme, "group_size": group_size_of(quant),
                     **count(folder, quant, args.device)})
    ways = list(rows[0]["codes_differ"])
    print("share of the quantized weights (linears, embedding) whose trained code / value is not the shipped one")
    print("| checkpoint | scheme | weights | " + " | ".join(ways) + " |")
    print("|---|---|---|" + "---|" * len(ways))
    for row in rows:
        print(f"| {row['checkpoint']} | {row['scheme']} g{row['group_size']} | {row['weights']:,} | "
              + " | ".join(f"{row['codes_differ'][w]:.4%} / {row['values_differ'][w]:.2%}" for w in ways) + " |")
    write_json_atomic(args.json, {"device": args.device, "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
