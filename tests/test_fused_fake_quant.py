"""The fused fake-quantized linear computes what torchao's does: outputs and straight-through gradients.

On CPU the fused functions run eagerly and must match torchao bit for bit, and so must the Triton kernels
that bf16 uses on CUDA, run here through Triton's interpreter. On CUDA (the device machine) the kernels
run compiled, and the comparison allows for cuBLAS choosing other kernels for other matmul shapes.
The reference fake-quantizes weights with torchao's own quantizer on the fp32 weight, as edgeqat does in
every dtype (weight_fake_quant.py): in bf16 that is where the two differ from torchao's bf16 quantizer.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torchao.quantization.qat import IntxFakeQuantizer

from edgeqat.config import QuantConfig
from edgeqat.train.fused_linear import FusedFakeQuantizedLinear, fused_spec, use_fused
from edgeqat.train.quantize import convert_qat, prepare_qat, strip_fake_quant
from edgeqat.train.weight_fake_quant import WeightFakeQuantizer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SCHEMES = [("8da4w", 32), ("8da4w", 64), ("8da4w", 128), ("8da4w", 0), ("8da8w", 0), ("4w", 32), ("4w", 128)]


class _TorchaoOnFp32(IntxFakeQuantizer):
    """The reference weight quantizer: torchao's arithmetic on the weight in fp32, on the CPU (where convert
    runs: on CUDA torchao divides by 7.5 through a reciprocal, and a group's negative absmax weight, which
    sits on the tie -7.5, then takes -7 or -8 by the last bit of the scale)."""

    def forward(self, w):
        return super().forward(w.cpu().float()).to(w.device, w.dtype)


def _prepared(scheme: str, group_size: int, dtype, device, bias: bool = True, in_features: int = 256):
    """A one-linear QAT model; its weight quantizer is the torchao reference (use_fused gives edgeqat's)."""
    model = torch.nn.Sequential(torch.nn.Linear(in_features, 192, bias=bias)).to(device, dtype)
    prepare_qat(model, QuantConfig(scheme=scheme, group_size=group_size))
    model[0].weight_fake_quantizer.__class__ = _TorchaoOnFp32
    return model


def _use_fused(model):
    """edgeqat's model of a reference: its fp32 weight quantizer, then the fused linear."""
    model[0].weight_fake_quantizer.__class__ = WeightFakeQuantizer
    return use_fused(model)


def _inputs(dtype, device) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(3, 37, 256, device=device) * 3
    x[0, 0] = 0  # a token of zeros: the scale's eps clamp
    x[1, 2] = 5.0  # a constant token
    x[2, 5, 7] = 400.0  # an outlier that squeezes the rest of its token into a few levels
    return x.to(dtype)


def _run(model, x, grad):
    x = x.clone().requires_grad_()
    out = model(x)
    out.backward(grad)
    linear = model[0]
    return out, x.grad, linear.weight.grad, None if linear.bias is None else linear.bias.grad


def _close(ours: torch.Tensor, theirs: torch.Tensor, device: str) -> None:
    if device == "cpu":
        assert torch.equal(ours, theirs), (ours.float() - theirs.float()).abs().max()
        return
    # CUDA: the matmuls see other shapes (cuBLAS picks other kernels) and a value on a rounding boundary
    # may fall the other way; both stay within bf16's precision of the whole tensor.
    error = ((ours.float() - theirs.float()).norm() / theirs.float().norm()).item()
    assert error < 1e-2, f"relative error {error:.2e}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("scheme,group_size", SCHEMES, ids=[f"{s}-g{g}" for s, g in SCHEMES])
def test_fused_linear_matches_torchao(scheme, group_size, dtype, device):
    reference = _prepared(scheme, group_size, dtype, device)
    fused = copy.deepcopy(reference)
    assert _use_fused(fused) == (1, 0) and type(fused[0]) is FusedFakeQuantizedLinear
    x = _inputs(dtype, device)
    grad = torch.randn(3, 37, 192, device=device, dtype=dtype)
    for ours, theirs in zip(_run(fused, x, grad), _run(reference, x, grad)):
        _close(ours, theirs, device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast")
@pytest.mark.parametrize("scheme,group_size", SCHEMES, ids=[f"{s}-g{g}" for s, g in SCHEMES])
def test_fused_linear_matches_torchao_under_autocast(scheme, group_size):
    """The Trainer runs under bf16 autocast, where torchao's ``1.0 / scale`` is computed in fp32."""
    reference = _prepared(scheme, group_size, torch.bfloat16, "cuda")
    fused = copy.deepcopy(reference)
    _use_fused(fused)
    x = _inputs(torch.bfloat16, "cuda")
    grad = torch.randn(3, 37, 192, device="cuda", dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        runs = _run(fused, x, grad), _run(reference, x, grad)
    for ours, theirs in zip(*runs):
        _close(ours, theirs, "cuda")
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme", ["8da4w", "4w"])
def test_frozen_weight_without_bias_gets_no_weight_gradient(device, scheme):
    """LoRA freezes the base weight: the fused backward then skips the weight's fake-quant work entirely
    (and a weight-only layer keeps no input for it)."""
    reference = _prepared(scheme, 32, torch.bfloat16, device, bias=False)
    reference[0].weight.requires_grad_(False)
    fused = copy.deepcopy(reference)
    _use_fused(fused)
    x = _inputs(torch.bfloat16, device)
    grad = torch.randn(3, 37, 192, device=device, dtype=torch.bfloat16)
    ours, theirs = _run(fused, x, grad), _run(reference, x, grad)
    assert ours[2] is None and theirs[2] is None
    _close(ours[0], theirs[0], device)
    _close(ours[1], theirs[1], device)


@pytest.mark.parametrize("range_learning", [False, True], ids=["absmax", "range-learning"])
def test_fused_model_trains_like_torchao_for_a_few_steps(range_learning):
    """Three AdamW steps on the embedded model end with identical weights (and learned scales) on CPU."""
    from edgeqat.train.model_loading import load_model
    from edgeqat.train.quantize import initialize_range_learning, learned_scales

    def trained(fused: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = load_model("default", torch.float32)
        prepare_qat(model, QuantConfig(range_learning=range_learning), fused=fused)
        if range_learning:
            initialize_range_learning(model, torch.device("cpu"))
        assert sum(type(m) is FusedFakeQuantizedLinear for m in model.modules()) == (29 if fused else 0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # as the Trainer on CUDA
        batch = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        scales = {f"{name}.learned_scale": s for name, s in learned_scales(model).items()}
        return {**strip_fake_quant(model).state_dict(), **scales}

    ours, theirs = trained(True), trained(False)
    assert ours.keys() == theirs.keys()
    assert sum(name.endswith(".learned_scale") for name in ours) == 28 * range_learning  # all but the tied head
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], rtol=0, atol=1e-6), name


# -- range learning: static scales that are trained --------------------------------------------------------

LEARNED = [("8da4w", 32), ("4w", 32), ("8da8w", 0)]


def _learned_scales(scheme: str, group_size: int, dtype, device) -> torch.nn.Sequential:
    """A one-linear range-learning model on torchao's eager quantizers (edgeqat's fp32 weight quantizer), its
    scales moved off the absmax they start at, so that some weights clamp and some groups have slack."""
    from torchao.quantization.qat import initialize_fake_quantizers

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 192)).to(device, dtype)
    prepare_qat(model, QuantConfig(scheme=scheme, group_size=group_size, range_learning=True))
    initialize_fake_quantizers(model, (torch.zeros(1, 256, device=device, dtype=dtype),))
    scale = model[0].weight_fake_quantizer.scale
    assert isinstance(scale, torch.nn.Parameter) and scale.dtype == torch.float32
    with torch.no_grad():
        scale.mul_(torch.rand_like(scale) * 0.6 + 0.6)
    return model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("scheme,group_size", LEARNED, ids=[f"learned-{s}-g{g}" for s, g in LEARNED])
@pytest.mark.parametrize("frozen", [False, True], ids=["trained-weight", "frozen-weight"])
def test_fused_linear_with_learned_scales_matches_torchaos_autograd(scheme, group_size, dtype, device, frozen):
    """Output and gradients, the learned scale's included, as torchao's range learning computes them; with the
    weight frozen (LoRA's base layer) the scale still gets its gradient."""
    reference = _learned_scales(scheme, group_size, dtype, device)
    reference[0].weight.requires_grad_(not frozen)
    fused = copy.deepcopy(reference)
    assert use_fused(fused) == (1, 0) and fused[0].fused_spec.learned_scale
    x = _inputs(dtype, device)
    grad = torch.randn(3, 37, 192, device=device, dtype=dtype)
    runs = [(*_run(model, x, grad), model[0].weight_fake_quantizer.scale.grad) for model in (fused, reference)]
    for name, ours, theirs in zip(("output", "x", "weight", "bias", "scale"), *runs):
        if name == "weight" and frozen:
            assert ours is None and theirs is None
            continue
        assert ours.dtype == theirs.dtype, name
        if name == "scale" and dtype == torch.bfloat16 and (device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
            # the kernel sums each group's terms in another order than eager: equal within fp32 rounding
            assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6 * theirs.abs().max().item()), name
            continue
        _close(ours, theirs, device)


def test_learned_scales_make_a_new_fake_quantized_weight_when_they_change():
    model = _learned_scales("8da4w", 32, torch.float32, "cpu")
    use_fused(model)
    first = model[0]._fake_quantized_weight()
    assert model[0]._fake_quantized_weight() is first
    with torch.no_grad():
        model[0].weight_fake_quantizer.scale.mul_(0.5)  # an in-place change, as a hand edit or a non-fused optimizer
    second = model[0]._fake_quantized_weight()
    assert second is not first and not torch.equal(second, first)


def test_quantizers_outside_the_fused_numerics_stay_with_torchao():
    from torchao.quantization import quantize_
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    float_scales = IntxFakeQuantizeConfig(torch.int4, group_size=32, scale_precision=torch.float32)
    per_token_symmetric_weights = QATConfig(
        activation_config=IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False, scale_precision=torch.float32),
        weight_config=IntxFakeQuantizeConfig(torch.int4, group_size=32), step="prepare",
    )
    for config in (QATConfig(weight_config=float_scales, step="prepare"), per_token_symmetric_weights):
        model = torch.nn.Sequential(torch.nn.Linear(64, 64))
        quantize_(model, config)
        assert fused_spec(model[0]) is None
        assert use_fused(model) == (0, 1) and type(model[0]) is not FusedFakeQuantizedLinear


def test_fused_linears_strip_back_to_plain_linears():
    model = _prepared("8da4w", 32, torch.float32, "cpu")
    assert _use_fused(model) == (1, 0)
    weight = model[0].weight
    strip_fake_quant(model)
    assert type(model[0]) is torch.nn.Linear and model[0].weight is weight


@pytest.mark.parametrize("fused", [True, False], ids=["fused-bf16-cpu", "torchao-bf16-cpu"])
def test_bf16_training_fake_quantizes_to_the_codes_convert_ships(fused):
    """A bf16 run's fake-quantized weights (linear and int4 embedding) are exactly the dequantized weights
    that convert makes of the bf16 checkpoint loaded in fp32; torchao's bf16 quantizer is not."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(128, 256), torch.nn.Linear(256, 192)).to(torch.bfloat16)
    with torch.no_grad():  # a trained-looking spread of magnitudes
        for p in model.parameters():
            p.mul_(torch.rand_like(p) * 4)
    quant = QuantConfig(scheme="8da4w", group_size=32, embedding_bits=4)
    deployed = copy.deepcopy(model).float()
    prepare_qat(model, quant, fused=fused)
    assert (type(model[1]) is FusedFakeQuantizedLinear) == fused
    prepare_qat(deployed, quant)
    convert_qat(deployed, quant)
    trained = {"embedding": model[0].weight_fake_quantizer(model[0].weight),
               "linear": model[1]._fake_quantized_weight() if fused else model[1].weight_fake_quantizer(model[1].weight)}
    shipped = {"embedding": deployed[0].weight.dequantize(), "linear": deployed[1].weight.dequantize()}
    for name in trained:
        assert trained[name].dtype == torch.bfloat16
        differing = (trained[name].float() != shipped[name].to(torch.bfloat16).float()).float().mean().item()
        assert differing == 0, f"{name}: {differing:.3%} of the weights train another value than they ship"
    torchao_bf16 = copy.deepcopy(model[1].weight_fake_quantizer)
    torchao_bf16.__class__ = IntxFakeQuantizer
    differing = (torchao_bf16(model[1].weight).float() != shipped["linear"].to(torch.bfloat16).float()).float().mean()
    assert differing > 1e-3  # what the fp32 quantizer is for: torchao's own, in bf16, trains other codes


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="already the interpreter run")
def test_triton_kernels_match_torchao_in_the_interpreter():
    """The bf16 cases again, in a process where Triton interprets its kernels on CPU tensors (Triton reads
    TRITON_INTERPRET once, when it starts), so that they take the kernels' path and must match bit for bit."""
    pytest.importorskip("triton")
    selection = "bf16 and cpu or frozen or kernels_ran"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stdout[-3000:]
    # bf16 on the CPU: 7 schemes, 3 learned-scale ones, the two codes tests and test_kernels_ran; every frozen-weight
    # case (2 absmax, 6 learned-scale), on CUDA too where there is one
    expected = 13 + 8 * len(DEVICES)
    assert f"{expected} passed" in result.stdout.splitlines()[-1], result.stdout[-500:]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="only in the interpreter run")
def test_kernels_ran():
    assert "edgeqat.train.fake_quant_triton" in sys.modules, "the bf16 cases did not take the kernels' path"


@pytest.mark.parametrize("fused_adamw", [False, True], ids=["adamw", "fused-adamw"])
def test_weight_is_fake_quantized_once_per_optimizer_step(fused_adamw):
    """Fused AdamW (the Trainer's default on CUDA) updates weights without bumping their version counter."""
    model = _prepared("8da4w", 32, torch.float32, "cpu")
    _use_fused(model)
    linear = model[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused_adamw)
    x = _inputs(torch.float32, "cpu")
    model(x).sum().backward()
    first = linear._fq_weight
    model(x).sum().backward()  # a second micro-batch (gradient accumulation): same weights, same copy
    assert linear._fq_weight is first
    optimizer.step()
    model(x).sum().backward()
    assert linear._fq_weight is not first and not torch.equal(linear._fq_weight, first)
    reference = _prepared("8da4w", 32, torch.float32, "cpu")
    reference[0].load_state_dict(linear.state_dict())
    assert torch.equal(linear._fq_weight, reference[0].weight_fake_quantizer(reference[0].weight).detach())


def test_cuda_training_runs_backward_on_the_calling_thread():
    """`edgeqat train` turns autograd's worker thread off on CUDA (train/host_overhead.py) and back on after."""
    from edgeqat.train.host_overhead import calling_thread_backward

    assert torch.autograd.is_multithreading_enabled()
    with calling_thread_backward(torch.device("cuda")):  # only a flag: no GPU needed to test it
        assert not torch.autograd.is_multithreading_enabled()
    assert torch.autograd.is_multithreading_enabled()
    with calling_thread_backward(torch.device("cpu")):
        assert torch.autograd.is_multithreading_enabled()
