"""Lowering an exported program to ExecuTorch with the XNNPACK delegate, and what it delegated."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

# Ops that, left outside the delegate, mean a linear layer runs on the slow portable kernels (attention's
# activation x activation products decompose to bmm and are not counted).
LINEAR_OPS = ("aten.linear.", "aten.addmm.", "aten.mm.")


@dataclass
class Lowered:
    program: bytes
    delegated_calls: int  # XNNPACK subgraphs
    undelegated_ops: dict[str, int]  # op name -> count, of what stayed on the portable CPU kernels
    linear_layers_undelegated: int


def _op_name(node) -> str:
    target = node.target
    return getattr(target, "__name__", None) or str(target)


def lower_to_xnnpack(program: torch.export.ExportedProgram, metadata: dict) -> Lowered:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    from edgeqat.export.llm_ops import load_kernels

    load_kernels()  # the out variants of the LLM ops and of the quantized embedding ops

    edge = to_edge_transform_and_lower(
        program,
        partitioner=[XnnpackPartitioner()],
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
        constant_methods=metadata,
    )
    graph = edge.exported_program().graph_module.graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    delegated = sum(_op_name(n) == "executorch_call_delegate" for n in calls)
    undelegated = Counter(_op_name(n) for n in calls if _op_name(n) not in ("executorch_call_delegate", "getitem"))
    linear_left = sum(c for op, c in undelegated.items() if op.startswith(LINEAR_OPS))
    backend_config = ExecutorchBackendConfig(
        extract_delegate_segments=True,
        # Fuses torchao's dequantize + embedding into ExecuTorch's quantized embedding kernels.
        do_quant_fusion_and_const_prop=True,
        # Plans memory for the largest prefill the dynamic seq_len allows.
        sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
    )
    return Lowered(edge.to_executorch(backend_config).buffer, delegated, dict(undelegated), linear_left)
