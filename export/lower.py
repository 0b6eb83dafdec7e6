"""Lowering an exported program to ExecuTorch with the XNNPACK delegate, and what it delegated."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

# Ops that, left outside the delegate, mean a linear layer runs on the slow portable kernels.
LINEAR_OPS = ("aten.linear", "aten.addmm", "quantized_decomposed.dequantize", "torchao.dequantize")


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
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

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
    return Lowered(edge.to_executorch().buffer, delegated, dict(undelegated), linear_left)
