"""Lowering an exported program to ExecuTorch with the XNNPACK delegate, and what it delegated."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

# Ops that, left outside the delegate, mean a linear layer runs on the slow portable kernels (attention's
# activation x activation products decompose to bmm and are not counted).
LINEAR_OPS = ("aten::linear.", "aten::addmm.", "aten::mm.")
# XNNPACK's preprocessing passes that rewrite only the ops named here (substrings of the op's name). Each pass
# re-traces its whole subgraph (about 2 % of a decoder's lowering apiece, profiled) even when it changes
# nothing, so a subgraph holding none of its ops skips it: a decoder has no convolution, batch norm, PReLU,
# padding, pooling, ReLU or decomposed SDPA (attention is llama::custom_sdpa, outside the delegate), and its
# linears reach XNNPACK as aten.linear, not mm. tests/test_export_ops.py checks the program comes out byte
# for byte the same.
PASS_TRIGGERS = {
    "ConvertToUpsampleBilinear2d": ("upsample", "_unsafe_index", "index.Tensor"),
    "FuseBatchNormPass": ("batch_norm",),
    "DecomposeBatchNorm": ("batch_norm",),
    "InsertPadQDQPass": ("constant_pad_nd",),
    "Conv1dUnsqueezePass": ("convolution",),
    "PReLUReshapePass": ("prelu",),
    "ConvertToSDPAPass": ("softmax",),  # its patterns are SDPA decomposed: bmm, mul, softmax
    "ConvertToLinearPass": ("mm.default",),  # mm, addmm, bmm
    "FuseActivationPass": ("relu", "hardtanh"),
    "DecomposeConcatenate": ("aten.cat",),
    "RemoveGetItemPass": ("max_pool2d_with_indices", "aten.max.dim"),
    "RemoveRedundantCopyPass": ("_to_copy",),
}
# Passes that act on node metadata rather than ops: needed only when a node carries that key.
PASS_META_TRIGGERS = {"PropagateCustomMetaPass": "custom"}
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


def _pass_can_match(name: str, ops: set[str], meta_keys: set[str]) -> bool:
    if name in PASS_TRIGGERS:
        return any(trigger in op for op in ops for trigger in PASS_TRIGGERS[name])
    if name in PASS_META_TRIGGERS:
        return PASS_META_TRIGGERS[name] in meta_keys
    return True


@contextmanager
def _unmatched_xnnpack_passes_skipped() -> Iterator[None]:
    from executorch.backends.xnnpack import xnnpack_preprocess

    original = xnnpack_preprocess.XNNPACKPassManager

    class SkippingPassManager(original):
        def transform(self):
            nodes = list(self.exported_program.graph.nodes)
            ops = {str(n.target) for n in nodes if n.op == "call_function"}
            meta_keys = {key for n in nodes for key in n.meta}
            self.passes = [p for p in self.passes if _pass_can_match(p.__name__, ops, meta_keys)]
            return super().transform()

    xnnpack_preprocess.XNNPACKPassManager = SkippingPassManager
    try:
        yield
    finally:
        xnnpack_preprocess.XNNPACKPassManager = original


def _partitioner(one_decomposition_pass: bool):
    """XNNPACK's partitioner; with ``one_decomposition_pass``, one that spares ExecuTorch a decomposition pass.

    ``to_edge_transform_and_lower`` keeps a partitioner's ops (aten.linear, torchao's quantize ops) from being
    decomposed in two passes when the partitioner filters them by a node check: one that preserves them all,
    then, after swapping the nodes that pass the check for placeholder ops, one that decomposes the rest. Each
    pass re-traces the whole program (about a sixth of the lowering, profiled). When every such node in the
    program passes the check, the second pass decomposes none of them, and saying "no check" takes
    ExecuTorch's single-pass path to the same program. Otherwise the check is returned and both passes run.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class OnePassXnnpackPartitioner(XnnpackPartitioner):
        def ops_to_not_decompose(self, ep):
            from executorch.exir.program._program import _remove_invalid_ops_for_not_decompose

            ops, check = super().ops_to_not_decompose(ep)
            preserved = set(ops)
            nodes = [n for n in ep.graph.nodes if n.op == "call_function" and n.target in preserved]
            if check is None or all(check(n) for n in nodes):
                # What the two-pass path would keep from decomposition, as it filters it.
                return _remove_invalid_ops_for_not_decompose(list(ops)), None
            return ops, check

    return OnePassXnnpackPartitioner() if one_decomposition_pass else XnnpackPartitioner()


def lower_to_xnnpack(program: torch.export.ExportedProgram, metadata: dict, skip_unmatched_passes: bool = True,
                     store_repeats_once: bool = True, one_decomposition_pass: bool = True) -> Lowered:
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    from edgeqat.export.llm_ops import load_kernels
    from edgeqat.export.shared_segments import Shared, store_repeated_data_once

    load_kernels()  # the out variants of the LLM ops and of the quantized embedding ops

    start = time.perf_counter()
    with _unmatched_xnnpack_passes_skipped() if skip_unmatched_passes else nullcontext():
        edge = to_edge_transform_and_lower(
            program,
            partitioner=[_partitioner(one_decomposition_pass)],
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
                   shared.bytes_saved)
