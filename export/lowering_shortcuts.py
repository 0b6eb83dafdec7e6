"""Shortcuts through ExecuTorch's XNNPACK lowering that change no byte of the program.

Lowering a decoder is mostly re-tracing: each ExecuTorch or XNNPACK pass replays the whole graph through fake
tensors with symbolic shapes, and most of them change nothing in a decoder. On the default model the
shortcuts here took the lowering from 106 s to 34 s (benchmarks/lowering_shortcuts.py, before the last two);
on the Qwen3-0.6B shape the last two took it from 146 s to 118 s (docs/decode_speed.md). Each one is exact by
construction (it runs the same rewrites, or skips only what cannot match), and tests/test_export_ops.py
checks that the `.pte` comes out byte for byte the same as ExecuTorch's own path. `shortcuts()` applies them
all for one lowering.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

# XNNPACK's preprocessing passes that rewrite only the ops named here (substrings of the op's name). Each pass
# re-traces its whole subgraph (about 2 % of a decoder's lowering apiece, profiled) even when it changes
# nothing, so a subgraph holding none of its ops skips it: a decoder has no convolution, batch norm, PReLU,
# padding, pooling, ReLU or decomposed SDPA (attention is llama::custom_sdpa, outside the delegate), and its
# linears reach XNNPACK as aten.linear, not mm.
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

# ExecuTorch's ATen-to-edge passes (exir/program/_program.py, _generate_edge_program) in the order it runs
# them. The runs of ExportPass subclasses that rewrite one operator at a time (they override call_operator
# only, and call super() for what they emit) are fused into one trace each; the others run as they are.
EDGE_PRE_OP_PASSES = ["ReplaceSymSizeOpPass", "NormalizeTransposePass", "ReplaceBrokenOpsWithFunctionalOpsPass",
                      "ScalarToTensorPass", "SymToTensorPass", "RemoveNoopPass", "PruneEmptyTensorsPass",
                      "RemoveToCopyPass", "RemoveMixedTypeOperators"]
FUSED_BEFORE_CLEANUP = slice(1, 5)  # NormalizeTranspose .. SymToTensor
FUSED_WITH_OP_REPLACE = "RemoveMixedTypeOperators"  # the last pre-op pass, run with OpReplace and MemoryFormat


def _pass_can_match(name: str, ops: set[str], meta_keys: set[str]) -> bool:
    if name in PASS_TRIGGERS:
        return any(trigger in op for op in ops for trigger in PASS_TRIGGERS[name])
    if name in PASS_META_TRIGGERS:
        return PASS_META_TRIGGERS[name] in meta_keys
    return True


@contextmanager
def unmatched_xnnpack_passes_skipped() -> Iterator[None]:
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


def partitioner(one_decomposition_pass: bool = True):
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


def _fused(*classes: type) -> type:
    """One ExportPass that applies ``classes``' per-operator rewrites in order, in a single trace.

    Each class overrides only ``call_operator`` and hands what it emits to ``super().call_operator``; in a
    class deriving from all of them, Python's method order makes ``super()`` the next pass's rewrite, so every
    op the first pass emits goes through the second, as it would in the second pass's own trace.
    """
    return type("Fused" + "".join(c.__name__ for c in classes), classes, {})


@contextmanager
def edge_passes_fused() -> Iterator[None]:
    """ExecuTorch's ATen-to-edge passes with the per-operator ones fused: 7 traces become 2.

    Applied only where ExecuTorch's list is the one this was written against (EDGE_PRE_OP_PASSES); any other
    version runs its passes unchanged.
    """
    from executorch.exir.pass_base import ExportPass, PassResult
    from executorch.exir.program import _program

    get_passes, op_replace, memory_format = (_program._get_aten_to_edge_passes, _program.OpReplacePass,
                                             _program.MemoryFormatOpsPass)

    class AlreadyApplied(ExportPass):  # MemoryFormatOpsPass, run inside the fused OpReplacePass
        def call(self, graph_module):
            return PassResult(graph_module, False)

    def fused_passes(config):
        pre, post = get_passes(config)
        passes = [getattr(p, "__wrapped__", p) for p in pre]  # ExportedProgramPassManager wraps each pass
        if [type(p).__name__ for p in passes] != EDGE_PRE_OP_PASSES or config._skip_dim_order:
            return pre, post
        _program.OpReplacePass = lambda: _fused(type(passes[-1]), op_replace, memory_format)()
        _program.MemoryFormatOpsPass = AlreadyApplied
        before_cleanup = _fused(*(type(p) for p in passes[FUSED_BEFORE_CLEANUP]))()
        return [pre[0], before_cleanup, *pre[FUSED_BEFORE_CLEANUP.stop:-1]], post

    _program._get_aten_to_edge_passes = fused_passes
    try:
        yield
    finally:
        _program._get_aten_to_edge_passes = get_passes
        _program.OpReplacePass, _program.MemoryFormatOpsPass = op_replace, memory_format


def _metadata_key(value, constants_by_value: bool = False):
    """What an op's output metadata can depend on: each tensor's size, stride, dtype and device, and the other
    arguments by value; None where that is not all (a fake tensor holding a known constant, which a rule may
    fold), unless ``constants_by_value``: then a small constant (a scalar the export lifted) is keyed by its
    values as well."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(value, torch.Tensor):
        if not isinstance(value, FakeTensor):
            return None
        meta = ("tensor", str(tuple(value.shape)), str(value.stride()), value.dtype, value.device.type,
                value.requires_grad)
        if value.constant is None:
            return meta
        if not constants_by_value or value.constant.numel() > 64:
            return None
        return (*meta, "constant", tuple(value.constant.flatten().tolist()))
    if isinstance(value, (list, tuple)):
        keys = [_metadata_key(v, constants_by_value) for v in value]
        return None if None in keys else (type(value).__name__, *keys)
    if isinstance(value, dict):
        keys = {k: _metadata_key(v, constants_by_value) for k, v in value.items()}
        return None if None in keys.values() else tuple(sorted(keys.items()))
    return ("value", type(value).__name__, str(value))  # ints, floats, SymInts (their expression), dtypes, None


def _memoized_fake_rule(rule, constants_by_value: bool = False):
    """``rule`` (a fake-tensor rule) run once per distinct input metadata (``_metadata_key``); later calls get
    new empty tensors of the first call's output sizes, strides and dtypes. Exact for what it serves: the
    outputs' metadata is a function of the inputs' unless a size is unbacked (data-dependent); such calls,
    those with constant inputs (unless keyed by value) and those that return anything but fresh,
    non-constant tensors always run the rule."""
    import torch
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
    from torch.utils import _pytree

    seen: dict = {}

    def fast(fake_mode, func, *args, **kwargs):
        key = _metadata_key((args, kwargs), constants_by_value)
        entry = seen.get((fake_mode, key)) if key is not None else None  # the mode itself: held, never an id reused
        if entry is not None:
            spec, leaves = entry
            with fake_mode:
                made = [torch.empty_strided(size, stride, dtype=dtype, device=device)
                        for size, stride, dtype, device in leaves]
            return _pytree.tree_unflatten(made, spec)
        out = rule(fake_mode, func, *args, **kwargs)
        flat, spec = _pytree.tree_flatten(out)
        if (key is not None and all(isinstance(t, torch.Tensor) for t in flat)
                and not free_unbacked_symbols([v for v in _pytree.tree_leaves((args, kwargs, flat))
                                               if isinstance(v, (torch.Tensor, torch.SymInt, torch.SymFloat))])
                and not any(t.requires_grad or t.storage_offset() != 0 or getattr(t, "constant", None) is not None
                            for t in flat)):
            seen[fake_mode, key] = spec, [(t.shape, t.stride(), t.dtype, t.device) for t in flat]
        return out

    return fast


@contextmanager
def delegates_faked_once() -> Iterator[None]:
    """Fake-tensor propagation through each delegate call once per distinct input metadata.

    After the lowering, each of ExecutorchBackend's re-traces of the program (two in ``to_executorch``, one of
    them SpecPropPass) propagates fake tensors through every delegate call by unlifting the delegated
    subgraph's original program and running it whole: for the 59 delegates of a 0.6 B decoder, three
    quarters of the serialisation stage. The subgraph's outputs' metadata is a function of its inputs' (and
    of the scalar constants the export lifted, keyed by value), so the first run serves later calls with the
    same inputs in the same fake mode (``_memoized_fake_rule``); calls on real tensors run as before.
    """
    import importlib

    from torch._guards import detect_fake_mode

    # The module, not the operator of the same name that torch._higher_order_ops exports
    call_delegate = importlib.import_module("torch._higher_order_ops.executorch_call_delegate")

    run = call_delegate.call_delegate_cpu  # what the fake rule and the tracing of a delegate call run
    memos: dict = {}  # one memo per delegate, keyed by the module itself

    def per_module_rule(fake_mode, lowered_module, *args):
        return run(lowered_module, *args)

    def run_faked_once(lowered_module, *args):
        fake_mode = detect_fake_mode(args)
        if fake_mode is None:
            return run(lowered_module, *args)
        if lowered_module not in memos:
            memos[lowered_module] = _memoized_fake_rule(per_module_rule, constants_by_value=True)
        return memos[lowered_module](fake_mode, lowered_module, *args)

    call_delegate.call_delegate_cpu = run_faked_once
    try:
        yield
    finally:
        call_delegate.call_delegate_cpu = run


@contextmanager
def preserved_ops_faked_once() -> Iterator[None]:
    """Fake-tensor propagation of the ops a decomposition preserves, once per distinct input metadata.

    ``run_decompositions`` gives each op it preserves (aten.linear, torchao's quantize ops: composite ops
    that XNNPACK takes whole) a fake-tensor rule that runs the op's whole decomposition on fake tensors, for
    every one of the program's hundreds of linears: about a third of that pass. The same rule runs here once
    for each distinct input size, stride and dtype, and its output metadata serves the rest.
    """
    from torch._subclasses import fake_impls
    from torch.export import exported_program

    override = exported_program._override_composite_implicit_decomp

    @contextmanager
    def override_memoized(cia_ops_to_callable):
        with override(cia_ops_to_callable):  # registers the rules (where an op has none) and removes them after
            for op in cia_ops_to_callable:
                if op in fake_impls.op_implementations_dict:
                    fake_impls.op_implementations_dict[op] = _memoized_fake_rule(fake_impls.op_implementations_dict[op])
            yield

    exported_program._override_composite_implicit_decomp = override_memoized
    try:
        yield
    finally:
        exported_program._override_composite_implicit_decomp = override


@contextmanager
def graph_sorted_without_recompiling() -> Iterator[None]:
    """The top-level graph's Python code generated once after the delegate subgraphs are cut out, not after each.

    ExecuTorch cuts each subgraph out of the program and re-sorts the graph (``legalize_graph``), and setting
    the sorted graph regenerates the whole program's Python code: for 59 subgraphs of a 0.6 B decoder that
    was 13 s of code nobody runs in between. The sort is the same; the code is generated once at the end.
    """
    from executorch.exir import lowered_backend_module
    from executorch.exir.backend import backend_api

    legalize, create_partitions = lowered_backend_module.legalize_graph, backend_api._create_partitions_in_graph_module
    sorted_modules: dict[int, object] = {}

    def legalize_without_recompiling(gm):
        gm.recompile = lambda: None  # the graph setter's call; an instance attribute shadows the method
        try:
            return legalize(gm)
        finally:
            del gm.recompile
            sorted_modules[id(gm)] = gm

    def create_partitions_then_recompile(*args, **kwargs):
        try:
            return create_partitions(*args, **kwargs)
        finally:
            for gm in sorted_modules.values():
                gm.recompile()
            sorted_modules.clear()

    lowered_backend_module.legalize_graph = legalize_without_recompiling
    backend_api._create_partitions_in_graph_module = create_partitions_then_recompile
    try:
        yield
    finally:
        lowered_backend_module.legalize_graph = legalize
        backend_api._create_partitions_in_graph_module = create_partitions


_JOBS: list = []  # (edge program, compile specs) per subgraph, set before the workers fork


def _die_with(parent: int) -> None:
    """Ends this worker when the export process ``parent`` is gone. A SIGKILL (a timeout, the OOM killer)
    gives the parent no chance to stop its workers, and they would otherwise run on, holding their memory."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:  # PR_SET_PDEATHSIG: the kernel sends SIGKILL when the parent dies
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def _preprocess_in_worker(jobs: list[int], results, parent: int, inherited: list) -> None:
    """A forked worker: preprocesses its share of _JOBS, sending (index, result) or (None, traceback)."""
    import torch
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    _die_with(parent)
    for receiver in inherited:  # the parent's ends of the pipes: with one open here, a send to a parent
        receiver.close()        # that has died would block for ever on a full pipe instead of failing
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the CLI's handler: a terminated worker just ends
    torch.set_num_threads(1)  # one worker per core; and OpenMP's thread pool does not survive a fork
    try:
        for index in jobs:
            program, specs = _JOBS[index]
            results.send((index, XnnpackBackend.preprocess(program, specs)))
    except BaseException:  # noqa: BLE001 -- whatever ends the worker, the parent must hear of it
        results.send((None, traceback.format_exc()))
    finally:
        results.close()


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _shares(sizes: list[int], workers: int) -> list[list[int]]:
    """Job indices per worker: largest first, each to the worker with the least work so far."""
    shares: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for index in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        least = loads.index(min(loads))
        shares[least].append(index)
        loads[least] += sizes[index]
    return [share for share in shares if share]


def _preprocess_forked(workers: int) -> dict[int, object]:
    context = multiprocessing.get_context("fork")
    processes, pending = [], []
    results: dict[int, object] = {}
    try:
        for share in _shares([len(program.graph.nodes) for program, _ in _JOBS], workers):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_preprocess_in_worker, daemon=True,
                                      args=(share, sender, os.getpid(), [*pending, receiver]))
            process.start()
            sender.close()  # the worker's end: EOF here once the worker is gone
            processes.append(process)
            pending.append(receiver)
        while pending:
            for receiver in multiprocessing.connection.wait(pending):
                try:
                    index, result = receiver.recv()
                except EOFError:
                    pending.remove(receiver)
                    continue
                if index is None:
                    raise RuntimeError(f"XNNPACK preprocessing failed in a worker process:\n{result}")
                results[index] = result
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()
    missing = sorted(set(range(len(_JOBS))) - results.keys())
    if missing:
        codes = [process.exitcode for process in processes]
        raise RuntimeError(f"an XNNPACK preprocessing worker ended (exit codes {codes}; -9 is often the kernel "
                           f"killing it for memory) before delegate subgraphs {missing} were done; "
                           "export again with fewer workers (--lowering-workers 1)")
    return results


@contextmanager
def xnnpack_subgraphs_preprocessed_in_parallel(workers: int) -> Iterator[None]:
    """XNNPACK's per-subgraph preprocessing (its passes, weight packing, flatbuffer) in ``workers`` forked
    processes, the largest subgraphs shared out first; the results go back in ExecuTorch's order, so the
    program is the same.

    Subgraphs are independent (XnnpackBackend.preprocess takes one and returns its bytes). Serial where a fork
    is not possible (a daemon process, a platform without fork) or there is one subgraph.
    """
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir.backend.backend_details import BackendDetails

    if "preprocess_multimethod" in XnnpackBackend.__dict__:  # a version with its own: leave it be
        yield
        return
    serial = BackendDetails.preprocess_multimethod.__func__
    can_fork = "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon

    def preprocess_multimethod(cls, edge_programs, compile_specs):
        jobs = [(name, i) for name, programs in edge_programs.items() for i in range(len(programs))]
        if workers <= 1 or len(jobs) < 2 or not can_fork:
            return serial(cls, edge_programs, compile_specs)
        _JOBS[:] = [(edge_programs[name][i], compile_specs[name][i]) for name, i in jobs]
        try:
            results = _preprocess_forked(min(workers, len(jobs)))
        finally:
            _JOBS.clear()
        by_method: dict[str, list] = {name: [] for name in edge_programs}
        for index, (name, _) in enumerate(jobs):
            by_method[name].append(results[index])
        return by_method

    XnnpackBackend.preprocess_multimethod = classmethod(preprocess_multimethod)
    try:
        yield
    finally:
        del XnnpackBackend.preprocess_multimethod  # BackendDetails' serial one again


@contextmanager
def shortcuts(workers: int | None = None) -> Iterator[None]:
    """All the shortcuts but the partitioner's (pass ``partitioner()`` to the lowering for that one)."""
    with (unmatched_xnnpack_passes_skipped(), edge_passes_fused(), preserved_ops_faked_once(),
          graph_sorted_without_recompiling(),
          xnnpack_subgraphs_preprocessed_in_parallel(workers or available_cores())):
        yield
