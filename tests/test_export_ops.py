"""The export's module swaps (export/llm_ops.py, export/rms_norm.py) compute what transformers' modules do:
the decoder with ExecuTorch's cache and attention ops against transformers' static-cache recipe, and the
delegated RMSNorm against each family's own."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from edgeqat.export.kv_cache import eager_forward, program_decoder, reference_decoder
from edgeqat.export.rms_norm import SCALES, DelegatedRMSNorm, delegate_rms_norms
from edgeqat.generation import greedy, prefill_positions
from edgeqat.native_output import held_output


def _tiny(model_type: str, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                                  max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


FAMILIES = [("llama", {}), ("qwen3", {"head_dim": 16}), ("gemma3_text", {"head_dim": 16, "sliding_window": 64}),
            ("olmo2", {}), ("phi3", {})]


@pytest.mark.parametrize("model_type,extra", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_delegated_rms_norm_equals_the_familys_own(model_type, extra):
    model = _tiny(model_type, **extra)
    with torch.no_grad():
        for module in model.modules():  # non-trivial scales, so that the Gemma offset matters
            if type(module).__name__.endswith("RMSNorm"):
                module.weight.normal_()
    x = torch.randn(1, 5, 64)
    expected = {name: module(x[..., : module.weight.shape[0]]) for name, module in model.named_modules()
                if type(module).__name__ in SCALES}
    assert delegate_rms_norms(model) == len(expected) > 0
    assert not [m for m in model.modules() if type(m).__name__ in SCALES]
    for name, output in expected.items():
        replacement = model.get_submodule(name)
        assert isinstance(replacement, DelegatedRMSNorm)
        torch.testing.assert_close(replacement(x[..., : replacement.scale.shape[0]]), output, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type,extra", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_the_llm_ops_decoder_matches_transformers_static_cache(model_type, extra):
    """Prefill, then decode step by step: logits at every step and the greedy tokens agree."""
    import copy

    model = _tiny(model_type, **extra)
    ours = eager_forward(program_decoder(copy.deepcopy(model), 32))
    reference = eager_forward(reference_decoder(model, 32))
    prompt = torch.tensor([[3, 14, 15, 9, 2, 6]])
    with held_output():  # the ops' eager kernels log a line per call about a temporary allocator
        torch.testing.assert_close(ours(prompt, prefill_positions(0, 6)), reference(prompt, prefill_positions(0, 6)),
                                   rtol=1e-4, atol=1e-4)
        for position in range(6, 12):
            token = torch.tensor([[position * 7 % 97]])
            torch.testing.assert_close(ours(token, prefill_positions(position, 1)),
                                       reference(token, prefill_positions(position, 1)), rtol=1e-4, atol=1e-4)
        ids = [5, 8, 13]
        ours = eager_forward(program_decoder(copy.deepcopy(model), 32))
        reference = eager_forward(reference_decoder(copy.deepcopy(model), 32))
        assert greedy(ours, ids, 20, 32) == greedy(reference, ids, 20, 32)


def test_a_sliding_window_shorter_than_the_cache_is_refused():
    from edgeqat.errors import EdgeqatError

    model = _tiny("gemma3_text", head_dim=16, sliding_window=16)
    with pytest.raises(EdgeqatError, match="max_seq_len 32 is larger than the model's sliding window"):
        program_decoder(model, 32)


def test_weights_dequantized_once_gives_the_same_logits_bit_for_bit():
    """The golden outputs' fast path (export/bundle.py) is the same model: each quantized weight's float value
    is computed once instead of on every call, nothing else changes."""
    from edgeqat.config import QuantConfig
    from edgeqat.export.bundle import weights_dequantized_once
    from edgeqat.train.quantize import quantize_ptq

    model = _tiny("qwen3", head_dim=16)
    quantize_ptq(model, QuantConfig(embedding_bits=4))
    forward = eager_forward(program_decoder(model, 32))
    prompt = torch.tensor([[3, 14, 15, 9, 2, 6]])
    with held_output():
        plain = [forward(prompt, prefill_positions(0, 6)), forward(prompt[:, :1], prefill_positions(6, 1))]
        with weights_dequantized_once():
            cached = [forward(prompt, prefill_positions(0, 6)), forward(prompt[:, :1], prefill_positions(6, 1))]
            again = forward(prompt[:, :1], prefill_positions(6, 1))
    assert all(torch.equal(a, b) for a, b in zip(plain, cached)) and torch.equal(again, plain[1])


def test_the_lowering_shortcuts_leave_the_program_byte_for_byte_the_same():
    """The seven shortcuts (XNNPACK passes that match nothing skipped, one decomposition pass, the edge passes
    fused, preserved ops' fake rules run once per input metadata, one code generation after the subgraphs are
    cut out, subgraphs preprocessed in two processes, and each delegate call's fake run reused by the later
    re-traces) change no byte."""
    from edgeqat.config import QuantConfig
    from edgeqat.export.kv_cache import export_decoder
    from edgeqat.export.lower import lower_to_xnnpack
    from edgeqat.train.quantize import quantize_ptq

    model = _tiny("qwen3", head_dim=16)
    quantize_ptq(model, QuantConfig(embedding_bits=4))
    import copy

    def program():  # lowering changes the program it is given: one export each
        return export_decoder(program_decoder(copy.deepcopy(model), 32), 32)

    fast = lower_to_xnnpack(program(), {"get_max_seq_len": 32}, workers=2)
    full = lower_to_xnnpack(program(), {"get_max_seq_len": 32}, shortcuts=False)
    assert fast.program == full.program
    assert fast.delegated_calls == full.delegated_calls > 1 and fast.undelegated_ops == full.undelegated_ops


def test_the_edge_passes_are_fused_with_this_executorch():
    """The fusion applies to the pinned ExecuTorch's pass list (another list would run unfused, and slowly)."""
    from executorch.exir import EdgeCompileConfig
    from executorch.exir.program import _program

    from edgeqat.export.lowering_shortcuts import edge_passes_fused

    with edge_passes_fused():
        pre, _ = _program._get_aten_to_edge_passes(EdgeCompileConfig())
        names = [type(getattr(p, "__wrapped__", p)).__name__ for p in pre]
        op_replace = type(_program.OpReplacePass()).__name__
    fused = ("FusedNormalizeTransposePassReplaceBrokenOpsWithFunctionalOpsPass"
             "ScalarToTensorPassSymToTensorPass")
    assert names == ["ReplaceSymSizeOpPass", fused, "RemoveNoopPass", "PruneEmptyTensorsPass", "RemoveToCopyPass"]
    assert op_replace == "FusedRemoveMixedTypeOperatorsOpReplacePassMemoryFormatOpsPass"
    assert type(_program.OpReplacePass()).__name__ == "OpReplacePass"  # restored


def test_subgraphs_are_shared_out_largest_first_to_the_least_loaded_worker():
    from edgeqat.export.lowering_shortcuts import _shares

    assert _shares([5, 100, 7, 60, 50], 2) == [[1, 2, 0], [3, 4]]
    assert _shares([3, 1], 4) == [[0], [1]]  # no empty worker


def test_a_worker_that_fails_or_dies_is_a_clear_error(monkeypatch):
    import os

    from edgeqat.export import lowering_shortcuts

    class Broken:
        graph = type("Graph", (), {"nodes": [1, 2]})()

    monkeypatch.setattr(lowering_shortcuts, "_JOBS", [(Broken(), []), (Broken(), [])])
    with pytest.raises(RuntimeError, match="failed in a worker process"):
        lowering_shortcuts._preprocess_forked(2)

    def dies(*args):
        os._exit(9)

    monkeypatch.setattr(lowering_shortcuts, "_preprocess_in_worker", dies)
    with pytest.raises(RuntimeError, match=r"worker ended \(exit codes \[9, 9\].*subgraphs \[0, 1\]"):
        lowering_shortcuts._preprocess_forked(2)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_the_export_process_is_killed(monkeypatch, tmp_path):
    """A SIGKILLed export (a timeout, the OOM killer) leaves no preprocessing worker running on."""
    import multiprocessing
    import signal
    import time

    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    from edgeqat.export import lowering_shortcuts

    def slow(program, specs):  # runs in a worker
        (tmp_path / f"{os.getpid()}.pid").touch()
        time.sleep(120)

    class Job:
        graph = type("Graph", (), {"nodes": [1]})()

    monkeypatch.setattr(XnnpackBackend, "preprocess", staticmethod(slow))
    monkeypatch.setattr(lowering_shortcuts, "_JOBS", [(Job(), []), (Job(), [])])
    export = multiprocessing.get_context("fork").Process(target=lowering_shortcuts._preprocess_forked, args=(2,))
    export.start()
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(workers) == 2 and all(map(_running, workers))
    os.kill(export.pid, signal.SIGKILL)
    export.join()
    deadline = time.monotonic() + 10
    while any(map(_running, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_running, workers))


def test_one_decomposition_pass_only_when_the_partitioner_takes_every_preserved_node():
    from edgeqat.export.lowering_shortcuts import partitioner

    class Linears(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.taken = torch.nn.Linear(8, 8)
            self.weight = torch.nn.Parameter(torch.randn(8, 8))

        def forward(self, x, w):
            # XNNPACK takes a linear whose weight is a parameter, not one whose weight is an input.
            return self.taken(x) if w is None else torch.nn.functional.linear(self.taken(x), w)

    x = torch.randn(2, 8)
    taken = torch.export.export(Linears(), (x, None)).run_decompositions({})
    ops, check = partitioner().ops_to_not_decompose(taken)
    assert check is None and torch.ops.aten.linear.default in ops
    refused = torch.export.export(Linears(), (x, torch.randn(8, 8))).run_decompositions({})
    ops, check = partitioner().ops_to_not_decompose(refused)
    assert check is not None  # the upstream two-pass path, which decomposes the refused linear


def test_a_preserved_ops_fake_rule_runs_once_per_distinct_input_metadata():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from edgeqat.export.lowering_shortcuts import _memoized_fake_rule

    calls = []

    def rule(fake_mode, func, x, dtype):  # a quantize-like op: a new tensor, transposed, of another dtype
        calls.append(tuple(x.shape))
        with fake_mode:
            return x.t().contiguous().to(dtype), x.sum(-1)

    fast = _memoized_fake_rule(rule)
    mode = FakeTensorMode()
    with mode:
        x, y, other = torch.empty(4, 6), torch.empty(4, 6), torch.empty(4, 7)
    first, again = fast(mode, None, x, torch.int8), fast(mode, None, y, torch.int8)
    assert calls == [(4, 6)]
    for a, b in zip(first, again):
        assert (a.shape, a.stride(), a.dtype, a.device) == (b.shape, b.stride(), b.dtype, b.device) and a is not b
    fast(mode, None, other, torch.int8)  # another size
    fast(mode, None, x, torch.float16)  # another argument
    constant = mode.from_tensor(torch.ones(4, 6), static_shapes=True)
    constant.constant = torch.ones(4, 6)  # a fake tensor with a known value: a rule may fold it
    fast(mode, None, constant, torch.int8)
    assert calls == [(4, 6), (4, 7), (4, 6), (4, 6)]


def test_a_delegate_calls_fake_run_is_reused_only_for_the_same_inputs_and_scalar_constants():
    """delegates_faked_once keys the lifted scalar constants a delegate takes by value: the same value reuses
    the first run, another value runs again, and a large constant always runs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from edgeqat.export.lowering_shortcuts import _memoized_fake_rule

    calls = []

    def run(fake_mode, delegate, x, eps):
        calls.append(eps.constant.flatten()[0].item())
        with fake_mode:
            return (x * 2,)

    fast = _memoized_fake_rule(run, constants_by_value=True)
    mode = FakeTensorMode()

    def constant(value):
        fake = mode.from_tensor(value, static_shapes=True)
        fake.constant = value
        return fake

    with mode:
        x = torch.empty(3, 8)
    fast(mode, None, x, constant(torch.tensor(0.5)))
    out = fast(mode, None, x, constant(torch.tensor(0.5)))  # the same value: reused
    assert calls == [0.5] and out[0].shape == (3, 8) and out[0].constant is None
    fast(mode, None, x, constant(torch.tensor(0.25)))  # another value runs again
    assert calls == [0.5, 0.25]
    big = constant(torch.ones(65))
    for _ in range(2):
        fast(mode, None, x, big)  # too large to key by value: always runs
    assert len(calls) == 4


@pytest.mark.parametrize("model_type,extra", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_a_model_built_to_be_loaded_has_the_familys_own_buffers(model_type, extra):
    """load_converted skips the random weight initialisation (the checkpoint replaces every weight), and the
    buffers nobody loads come out as a normally built model's."""
    from edgeqat.train.convert import model_to_load

    built = _tiny(model_type, **extra)
    empty = model_to_load(built.config)
    assert dict(empty.named_buffers()).keys() == dict(built.named_buffers()).keys()
    for name, buffer in built.named_buffers():
        assert torch.equal(dict(empty.named_buffers())[name], buffer), name
    assert {n: p.shape for n, p in empty.named_parameters()} == {n: p.shape for n, p in built.named_parameters()}


def test_the_rotation_as_a_linear_layer_is_transformers_rotate_half_exactly():
    from transformers.models.llama.modeling_llama import rotate_half

    from edgeqat.export.rope import Rotations, rotation_matrix

    rotations = Rotations()
    for width in (8, 64, 128):
        rotations.register_buffer(f"rotation_{width}", rotation_matrix(width), persistent=False)
        x = torch.randn(1, 4, 5, width)
        assert torch.equal(rotations.rotate_half(x), rotate_half(x))
    x = torch.randn(2, 6)  # a width with no matrix: the slices
    assert torch.equal(rotations.rotate_half(x), rotate_half(x))


@pytest.mark.parametrize("model_type,extra", FAMILIES, ids=[f for f, _ in FAMILIES])
def test_the_decoder_with_its_rotation_as_a_linear_layer_gives_the_same_logits(model_type, extra):
    import sys

    from edgeqat.export.rope import rotation_as_linear

    model = _tiny(model_type, **extra)
    decoder = program_decoder(model, 32)
    forward = eager_forward(decoder)
    prompt = torch.tensor([[3, 14, 15, 9, 2, 6]])
    modeling = sys.modules[type(model).__module__]
    original = modeling.rotate_half
    with held_output():
        plain = forward(prompt, prefill_positions(0, 6))
        with rotation_as_linear(decoder, model.config) as patched:
            rotated = forward(prompt, prefill_positions(0, 6))
    assert patched >= 1 and modeling.rotate_half is original  # restored after the block
    assert torch.equal(plain, rotated)
