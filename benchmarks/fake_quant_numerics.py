"""How close are edgeqat's fused fake-quantized linears to torchao's? Outputs and gradients, on random inputs.

    python benchmarks/fake_quant_numerics.py                 # on the GPU: the compiled kernels
    python benchmarks/fake_quant_numerics.py --device cpu    # eager: expected bit-identical

For each scheme and dtype, one linear layer shaped like a Qwen3-0.6B MLP projection runs forward and backward
through torchao's FakeQuantizedLinear and through the fused one, from the same weights, inputs and output
gradient. Prints, per tensor (output, input gradient, weight gradient), the share of elements that are
bit-identical and the relative error (norm of the difference over norm of torchao's); writes JSON.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from edgeqat.artifacts import versions, write_json_atomic
from edgeqat.config import QuantConfig
from edgeqat.train.fused_linear import use_fused
from edgeqat.train.quantize import prepare_qat

SCHEMES = [("8da4w", 32), ("8da4w", 128), ("8da4w", 0), ("8da8w", 0), ("4w", 32)]


def compare(scheme: str, group_size: int, dtype: torch.dtype, device: str, tokens: int, seed: int, autocast: bool) -> dict:
    torch.manual_seed(seed)
    reference = torch.nn.Sequential(torch.nn.Linear(1024, 3072, bias=False)).to(device, dtype)
    prepare_qat(reference, QuantConfig(scheme=scheme, group_size=group_size))
    fused = copy.deepcopy(reference)
    use_fused(fused)
    x = torch.randn(tokens, 1024, device=device, dtype=dtype)
    grad = torch.randn(tokens, 3072, device=device, dtype=dtype)
    results = []
    for model in (reference, fused):
        xi = x.clone().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):  # as the Trainer trains
            out = model(xi)
            out.backward(grad)
        results.append({"output": out.detach(), "grad_input": xi.grad, "grad_weight": model[0].weight.grad})
    theirs, ours = results
    row = {"scheme": scheme, "group_size": group_size, "dtype": str(dtype).removeprefix("torch."), "autocast": autocast}
    for name in theirs:
        a, b = ours[name].float(), theirs[name].float()
        row[f"{name}_identical"] = (a == b).float().mean().item()
        row[f"{name}_relative_error"] = ((a - b).norm() / b.norm()).item()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("fake_quant_numerics.json"))
    args = parser.parse_args()

    runs = [(torch.bfloat16, False), (torch.float32, False)] + ([(torch.bfloat16, True)] if args.device == "cuda" else [])
    rows = [compare(s, g, dtype, args.device, args.tokens, args.seed, autocast) for s, g in SCHEMES for dtype, autocast in runs]
    print(f"\nfused vs torchao fake-quantized linear 1024 -> 3072, {args.tokens} tokens, {args.device}\n")
    print("| scheme | group | dtype | autocast | output identical | rel. error | grad input identical | rel. error "
          "| grad weight identical | rel. error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[f'{n}_identical']:.4%} | {r[f'{n}_relative_error']:.1e}" for n in ("output", "grad_input", "grad_weight")]
        print(f"| {r['scheme']} | {r['group_size'] or 'channel'} | {r['dtype']} | {'bf16' if r['autocast'] else '-'} | "
              + " | ".join(cells) + " |")
    write_json_atomic(args.json, {"device": args.device, "tokens": args.tokens, "rows": rows, "versions": versions()})


if __name__ == "__main__":
    main()
