"""Lowering an exported program to ExecuTorch with the XNNPACK delegate, and what it delegated."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass

import torch

# Ops that, left outside the delegate, mean a linear layer runs on the slow portable kernels (attention's
# activation x activation products decompose to bmm and are not counted).
LINEAR_OPS = ("aten::linear.", "aten::addmm.", "aten::mm.")
# Graph plumbing of an ExecuTorch program, not kernels: the delegate call itself, tuple access, memory
# planning's allocations and its no-copy views.
NOT_OPS = ("executorch_call_delegate", "getitem", "alloc", "view")


@dataclass
class Lowered:
    program: bytes
    delegated_calls: int  # XNNPACK subgraphs
    undelegated_ops: dict[str, int]  # op name -> count, of what stayed on the portable CPU kernels
    linear_layers_undelegated: int
    seconds: dict[str, float]  # "lowering" (to edge + XNNPACK), "serialization" (ExecuTorch passes + flatbuffer)
    bytes_stored_once: int = 0  # delegate data that reads a program constant's equal bytes (shared_segments.py)


def _op_name(node) -> str:
    """``namespace::op.overload`` of an operator (``aten::view_copy.out``), the name of a Python callable."""
    target = node.target
    if hasattr(target, "name") and callable(target.name):
        return target.name()
    return getattr(target, "__name__", None) or str(target)


def lower_to_xnnpack(program: torch.export.ExportedProgram, metadata: dict, shortcuts: bool = True,
                     store_repeats_once: bool = True, workers: int | None = None) -> Lowered:
    """``shortcuts``: export/lowering_shortcuts.py's exact shortcuts through the lowering (on ``workers``
    processes, default one per core); off, ExecuTorch's own path, to the same bytes."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    from edgeqat.export import lowering_shortcuts
    from edgeqat.export.llm_ops import load_kernels
    from edgeqat.export.shared_segments import Shared, store_repeated_data_once

    load_kernels()  # the out variants of the LLM ops and of the quantized embedding ops

    start = time.perf_counter()
    with lowering_shortcuts.delegates_faked_once() if shortcuts else nullcontext():
        with lowering_shortcuts.shortcuts(workers) if shortcuts else nullcontext():
            edge = to_edge_transform_and_lower(
                program,
                partitioner=[lowering_shortcuts.partitioner(one_decomposition_pass=shortcuts)],
                compile_config=EdgeCompileConfig(_check_ir_validity=False),
                constant_methods=metadata,
            )
        lowered = time.perf_counter()
        backend_config = ExecutorchBackendConfig(
            extract_delegate_segments=True,
            # Fuses torchao's dequantize + embedding into ExecuTorch's quantized embedding kernels.
            do_quant_fusion_and_const_prop=True,
            # Plans memory for the largest prefill the dynamic seq_len allows.
            sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
        )
        executorch = edge.to_executorch(backend_config)
    shared = store_repeated_data_once(executorch.buffer) if store_repeats_once else Shared(executorch.buffer, 0, 0)
    done = time.perf_counter()
    # Counted in the final program, after the quantized embedding fusion, as the runtime will run it.
    calls = [n for n in executorch.exported_program().graph_module.graph.nodes if n.op == "call_function"]
    delegated = sum(_op_name(n) == "executorch_call_delegate" for n in calls)
    undelegated = Counter(_op_name(n) for n in calls if _op_name(n) not in NOT_OPS)
    linear_left = sum(c for op, c in undelegated.items() if op.startswith(LINEAR_OPS))
    return Lowered(shared.program, delegated, dict(undelegated), linear_left,
                   {"lowering": round(lowered - start, 2), "serialization": round(done - lowered, 2)},
                   shared.bytes_stored_once)
