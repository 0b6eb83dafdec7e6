"""Where does a checkpoint's quantization loss come from? Held-out perplexity with each quantizer alone and
with all but it, for a bf16 fine-tune (what PTQ loses) and a QAT checkpoint (what QAT has not won back).

    python benchmarks/quant_error_budget.py runs/study/bf16-checkpoint runs/study/qat-checkpoint
    python benchmarks/quant_error_budget.py CKPT --scheme 8da4w --windows 12 --json budget.json

Each checkpoint is loaded in fp32 and fake-quantized the way QAT trains it (prepare_qat: torchao's
quantizers, weights in convert's fp32 arithmetic); the parts are then switched on and off through the
quantizers' own ``enabled`` flags:

- ``embedding``: the token embedding's weight (int4/int8 weight-only),
- ``head weight`` / ``head input``: the output layer's weight and its int8 dynamic activations,
- ``linear weights`` / ``linear inputs``: the same for every decoder linear.

"alone" is the increase over the float model with only that part on; "all but" is the decrease from the
fully fake-quantized model (= PTQ, or the converted QAT model) with that part off. Parts interact, so the
columns need not add up. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edgeqat.artifacts import versions, write_json_atomic
from edgeqat.config import QuantConfig, from_dict
from edgeqat.paths import DEFAULT_EVAL_DATA
from edgeqat.train.data import token_windows
from edgeqat.train.evaluate import perplexity
from edgeqat.train.quantize import prepare_qat

PARTS = ("embedding", "head weight", "head input", "linear weights", "linear inputs")


def _quant_config(folder: Path, args) -> QuantConfig:
    record = folder / "edgeqat.json"
    if args.scheme is None and record.is_file():
        quant = from_dict(QuantConfig, json.loads(record.read_text())["config"]["quant"])
        if quant.range_learning:
            raise SystemExit(f"{folder}: range-learned scales are not modelled here; give a per-step-scale checkpoint")
        return quant
    return QuantConfig(scheme=args.scheme or "8da4w", group_size=args.group_size, embedding_bits=args.embedding_bits)


def _quantizers(model: torch.nn.Module) -> dict[str, list]:
    """Each part's fake quantizers (a scheme without activation quantization has none for the inputs)."""
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    head = model.get_output_embeddings()
    parts = {part: [] for part in PARTS}
    for module in model.modules():
        if isinstance(module, FakeQuantizedEmbedding):
            parts["embedding"].append(module.weight_fake_quantizer)
        elif isinstance(module, FakeQuantizedLinear):
            weight, inputs = ("head weight", "head input") if module is head else ("linear weights", "linear inputs")
            parts[weight].append(module.weight_fake_quantizer)
            if module.activation_fake_quantizer is not None:
                parts[inputs].append(module.activation_fake_quantizer)
    return {part: quantizers for part, quantizers in parts.items() if quantizers}


def _switch(parts: dict[str, list], on: set[str]) -> None:
    for part, quantizers in parts.items():
        for quantizer in quantizers:
            quantizer.enabled = part in on


def budget(folder: Path, quant: QuantConfig, windows_count: int, length: int, dataset: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    windows = token_windows(tokenizer, dataset, DEFAULT_EVAL_DATA, windows_count, length)
    prepare_qat(model, quant)
    parts = _quantizers(model)
    cpu = torch.device("cpu")

    def ppl(on: set[str]) -> float:
        _switch(parts, on)
        return perplexity(model, windows, cpu)["perplexity"]

    float_ppl, all_ppl = ppl(set()), ppl(set(parts))
    rows = {part: {"alone": ppl({part}) - float_ppl, "all_but": all_ppl - ppl(set(parts) - {part})} for part in parts}
    return {"checkpoint": folder.name, "quant": {"scheme": quant.scheme, "group_size": quant.group_size,
            "embedding_bits": quant.embedding_bits}, "windows": len(windows),
            "float_perplexity": float_ppl, "quantized_perplexity": all_ppl, "parts": rows}


def _print(result: dict) -> None:
    loss = result["quantized_perplexity"] - result["float_perplexity"]
    print(f"\n{result['checkpoint']}: float {result['float_perplexity']:.3f}, fake-quantized "
          f"{result['quantized_perplexity']:.3f} ({loss:+.3f}), {result['windows']} windows")
    print("| part | alone (+ppl) | all but it (−ppl) | share of the loss, all but |\n|---|---|---|---|")
    for part, row in result["parts"].items():
        share = f"{row['all_but'] / loss:.0%}" if loss > 0 else "-"
        print(f"| {part} | {row['alone']:+.3f} | {row['all_but']:+.3f} | {share} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="HF checkpoint folders (bf16 fine-tune, QAT)")
    parser.add_argument("--scheme", default=None, help="default: the first checkpoint's record, else 8da4w")
    parser.add_argument("--group-size", type=int, default=None)
    parser.add_argument("--embedding-bits", type=int, default=4)
    parser.add_argument("--windows", type=int, default=12, help="held-out windows (the study's eval_windows)")
    parser.add_argument("--length", type=int, default=256, help="tokens per window (the study's max_length)")
    parser.add_argument("--dataset", default="default", help="held-out text (check.eval_dataset)")
    parser.add_argument("--json", type=Path, default=Path("quant_error_budget.json"))
    args = parser.parse_args()
    quant = _quant_config(args.checkpoints[0], args)
    results = [budget(folder, quant, args.windows, args.length, args.dataset) for folder in args.checkpoints]
    for result in results:
        _print(result)
    write_json_atomic(args.json, {"versions": versions(), "results": results})
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
