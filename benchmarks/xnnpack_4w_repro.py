"""Why edgeqat refuses to export `4w`: ExecuTorch's XNNPACK delegate runs torchao's int4 weight-only
linears (``IntxWeightOnlyConfig``, group 32) as if every weight scale were 1. See docs/xnnpack_4w.md.

    python benchmarks/xnnpack_4w_repro.py      # about a minute on 2 cores

1. The embedded default model, PTQ-quantized to 4w (no training), exported the way `edgeqat export` exports
   (export/kv_cache.program_decoder, export_decoder, lower_to_xnnpack) and run by ExecuTorch's runtime;
   its logits against the eager torchao model, and against the same eager model with every linear's
   scales set to 1.
2. One weight-only linear on its own: XNNPACK leaves the dequantize_affine outside the delegate and
   ExecuTorch has no kernel for it ("Missing out variants: torchao::dequantize_affine").

Exits 1 while the bug is there (the delegate does not match eager), 0 once it does.
"""

from __future__ import annotations

import copy
import sys

import torch


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def _scales_set_to_one(model: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and hasattr(module.weight, "scale"):
            module.weight.scale.fill_(1.0)
    return model


def whole_model() -> bool:
    """True when the delegate matches the eager model."""
    from executorch.runtime import Runtime
    from transformers import AutoModelForCausalLM

    from edgeqat.config import QuantConfig
    from edgeqat.export.kv_cache import eager_forward, export_decoder, program_decoder
    from edgeqat.export.llm_ops import load_kernels
    from edgeqat.export.lower import lower_to_xnnpack
    from edgeqat.native_output import held_output
    from edgeqat.paths import DEFAULT_MODEL
    from edgeqat.train.quantize import quantize_ptq

    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()
    quantize_ptq(model, QuantConfig(scheme="4w", embedding_bits=0))
    ids, positions = torch.tensor([[5, 9, 13, 200, 31, 7]]), torch.arange(6)
    with held_output():  # the LLM ops' eager kernels log a line per call
        eager = eager_forward(program_decoder(copy.deepcopy(model), 64))(ids, positions)
        unscaled = eager_forward(program_decoder(_scales_set_to_one(model), 64))(ids, positions)
    lowered = lower_to_xnnpack(export_decoder(program_decoder(model, 64), 64), {})
    load_kernels()
    program = Runtime.get().load_program(lowered.program).load_method("forward").execute([ids, positions])[0]
    print(f"1. default model, 4w, {lowered.delegated_calls} delegate calls; .pte logits vs")
    print(f"   eager torchao model:              cosine {_cosine(program, eager):.4f}, "
          f"max |diff| {(program - eager).abs().max():.4f}")
    print(f"   eager model with scales set to 1: cosine {_cosine(program, unscaled):.4f}, "
          f"max |diff| {(program - unscaled).abs().max():.4f}")
    return torch.allclose(program, eager, rtol=1e-3, atol=1e-2)


def one_linear() -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup
    from torchao.utils import unwrap_tensor_subclass

    model = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False)).eval()
    quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))
    unwrap_tensor_subclass(model)
    edge = to_edge_transform_and_lower(torch.export.export(model, (torch.randn(1, 5, 64),)),
                                       partitioner=[XnnpackPartitioner()])
    outside = sorted({n.target.name() for n in edge.exported_program().graph.nodes
                      if n.op == "call_function" and hasattr(n.target, "name")})
    print(f"2. one int4 weight-only linear: outside the delegate {outside}")
    try:
        edge.to_executorch()
        print("   serialized")
    except RuntimeError as error:
        print(f"   to_executorch: {error}")


def main() -> int:
    import executorch.version
    import torchao

    print(f"torch {torch.__version__}, torchao {torchao.__version__}, executorch {executorch.version.__version__}")
    matches = whole_model()
    one_linear()
    print("OK: the delegate matches eager" if matches else "BUG: the delegate computes the linears without their scales")
    return 0 if matches else 1


if __name__ == "__main__":
    sys.exit(main())
