"""Triton kernels for the fused fake-quantized linear in bf16 on CUDA: one launch per fake quantization.

Each kernel redoes the eager arithmetic of fused_fake_quant.py (which spells it out op by op) in
registers. The activation's is torchao's bf16 arithmetic: every intermediate is rounded to bf16 where
eager rounds an op's result, divisions by a Python number multiply by its fp32 reciprocal as ATen's CUDA
kernels do, and tensor divisions round correctly (``div_rn``). The weight's is fp32, as convert computes
it. The per-token kernel also runs the backward: from the input and the gradient of
its fake-quantized copy it writes the input's gradient and, in the same pass, the copy itself (which the
weight's gradient needs), so the backward of a linear reads its input once.

Why kernels and not torch.compile: a training step calls ~200 linears twice; inductor's wrappers cost
hundreds of microseconds of host time per call and the step became host-bound (measured on an H200:
1.5x a bf16 step with compiled graphs, the GPU itself busy only 2% longer).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

MAX_ROW = 16384  # longest row (in_features, or a per-channel group) one program holds in registers
# Triton's interpreter (TRITON_INTERPRET=1, read once when Triton starts) runs the kernels on the host, for
# CPU tensors and CUDA ones alike; the tests use it.
_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _bf16(x):
    # fp32 -> nearest bf16 (ties to even), kept in fp32: the rounding eager applies to each op's result.
    # Done on the bits, so that Triton's interpreter (which truncates in casts) computes it the same way.
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _inverse(scale, FP32_INVERSE: tl.constexpr):
    # ``1.0 / scale`` is a reciprocal: bf16 in eager, fp32 under CUDA autocast (it is on autocast's fp32
    # list), and then the product with it is fp32 too. The Trainer trains under autocast.
    inverse = tl.div_rn(1.0, scale)
    return inverse if FP32_INVERSE else _bf16(inverse)


@triton.jit
def _product(x, inverse, FP32_INVERSE: tl.constexpr):
    return x * inverse if FP32_INVERSE else _bf16(x * inverse)


@triton.jit
def _rint(x, INTERPRET: tl.constexpr):
    # Round half to even, as torch.round. Triton's interpreter has no libdevice; there, adding 1.5 * 2**23
    # leaves no fraction bits and IEEE addition rounds to nearest even (exact for |x| < 2**22). Compiled,
    # that trick could be contracted with a preceding multiply into an FMA, so libdevice's rint is used.
    if INTERPRET:
        return (x + 12582912.0) - 12582912.0
    else:
        return libdevice.rint(x)


@triton.jit
def _per_token_kernel(x_ptr, grad_ptr, fq_ptr, grad_x_ptr, K,
                      QMIN: tl.constexpr, QMAX: tl.constexpr, INV_RANGE: tl.constexpr, EPS: tl.constexpr,
                      BLOCK: tl.constexpr, WRITE_FQ: tl.constexpr, WRITE_GRAD: tl.constexpr, FP32_INVERSE: tl.constexpr,
                      INTERPRET: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    valid = cols < K
    offsets = row * K + cols
    x = tl.load(x_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    min_neg = tl.minimum(tl.min(tl.where(valid, x, float("inf")), axis=0), 0.0)
    max_pos = tl.maximum(tl.max(tl.where(valid, x, float("-inf")), axis=0), 0.0)
    scale = tl.maximum(_bf16(_bf16(max_pos - min_neg) * INV_RANGE), EPS)
    zero_point = _bf16(QMIN - _rint(_bf16(tl.div_rn(min_neg, scale)), INTERPRET))
    zero_point = tl.minimum(tl.maximum(zero_point, QMIN), QMAX)
    inverse = _inverse(scale, FP32_INVERSE)
    unclamped = _rint(_product(x, inverse, FP32_INVERSE), INTERPRET) + zero_point
    if not FP32_INVERSE:
        unclamped = _bf16(unclamped)
    if WRITE_FQ:
        q = tl.minimum(tl.maximum(unclamped, QMIN), QMAX)
        tl.store(fq_ptr + offsets, _bf16((q - zero_point) * scale).to(tl.bfloat16), mask=valid)
    if WRITE_GRAD:
        grad = tl.load(grad_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        in_range = (unclamped >= QMIN) & (unclamped <= QMAX)
        grad_x = _bf16(tl.where(in_range, _bf16(grad * scale), 0.0) * inverse)
        tl.store(grad_x_ptr + offsets, grad_x.to(tl.bfloat16), mask=valid)


@triton.jit
def _per_group_kernel(w_ptr, grad_ptr, out_ptr, n_groups, G,
                      QMIN: tl.constexpr, QMAX: tl.constexpr, HALF_RANGE: tl.constexpr, EPS: tl.constexpr,
                      BLOCK_GROUPS: tl.constexpr, BLOCK_G: tl.constexpr, BACKWARD: tl.constexpr,
                      INTERPRET: tl.constexpr):
    # In fp32 throughout, as convert computes the codes on the CPU (fused_fake_quant.fake_quant_per_group):
    # correctly rounded divisions, products not contracted into anything.
    groups = tl.program_id(0) * BLOCK_GROUPS + tl.arange(0, BLOCK_GROUPS)[:, None]
    cols = tl.arange(0, BLOCK_G)[None, :]
    valid = (groups < n_groups) & (cols < G)
    offsets = groups.to(tl.int64) * G + cols
    w = tl.load(w_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    min_neg = tl.minimum(tl.min(tl.where(valid, w, float("inf")), axis=1), 0.0)[:, None]
    max_pos = tl.maximum(tl.max(tl.where(valid, w, float("-inf")), axis=1), 0.0)[:, None]
    scale = tl.maximum(tl.div_rn(tl.maximum(-min_neg, max_pos), HALF_RANGE), EPS)
    inverse = tl.div_rn(1.0, scale)
    unclamped = _rint(w * inverse, INTERPRET)
    if BACKWARD:
        grad = tl.load(grad_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        in_range = (unclamped >= QMIN) & (unclamped <= QMAX)
        out = tl.where(in_range, grad * scale, 0.0) * inverse
    else:
        out = tl.minimum(tl.maximum(unclamped, QMIN), QMAX) * scale
    tl.store(out_ptr + offsets, _bf16(out).to(tl.bfloat16), mask=valid)


@triton.jit
def _learned_kernel(w_ptr, s_ptr, grad_ptr, out_ptr, grad_s_ptr, n_groups, G,
                    QMIN: tl.constexpr, QMAX: tl.constexpr, BLOCK_GROUPS: tl.constexpr, BLOCK_G: tl.constexpr,
                    BACKWARD: tl.constexpr, INTERPRET: tl.constexpr):
    # Range learning's weight with its learned fp32 scale, in fp32 as fused_fake_quant.fake_quant_learned(_backward)
    # computes it: forward ``clamp(rint(w · (1 / s))) · s``; backward the weight's straight-through gradient and
    # the scale's, summed over the group here in registers (the one result that is not eager's to the bit: the
    # order of that sum differs).
    groups = tl.program_id(0) * BLOCK_GROUPS + tl.arange(0, BLOCK_GROUPS)[:, None]
    cols = tl.arange(0, BLOCK_G)[None, :]
    valid = (groups < n_groups) & (cols < G)
    offsets = groups.to(tl.int64) * G + cols
    w = tl.load(w_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    scale = tl.load(s_ptr + groups, mask=groups < n_groups, other=1.0)
    inverse = tl.div_rn(1.0, scale)
    unclamped = _rint(w * inverse, INTERPRET)
    codes = tl.minimum(tl.maximum(unclamped, QMIN), QMAX)
    if BACKWARD:
        grad = tl.load(grad_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        in_range = (unclamped >= QMIN) & (unclamped <= QMAX)
        grad_codes = tl.where(in_range, grad * scale, 0.0)
        tl.store(out_ptr + offsets, _bf16(grad_codes * inverse).to(tl.bfloat16), mask=valid)
        grad_inverse = tl.sum(tl.where(valid, grad_codes * w, 0.0), axis=1)[:, None]
        grad_scale = tl.sum(tl.where(valid, grad * codes, 0.0), axis=1)[:, None] + -grad_inverse * (inverse * inverse)
        tl.store(grad_s_ptr + groups, grad_scale, mask=groups < n_groups)
    else:
        tl.store(out_ptr + offsets, _bf16(codes * scale).to(tl.bfloat16), mask=valid)


class _Launcher:
    """Launches a compiled kernel with as little host work as possible.

    A training step makes ~800 of these launches, and the fused QAT step is bound by host time, not by
    the GPU (measured on an H200: its kernels run within 3 % of a bf16 step's). ``kernel[grid](...)``
    binds, specializes and hashes every argument on each call (~18 us). Here the caller names the
    specialization with a small key of what it knows varies (shape, bounds, flags); the launcher adds
    device and pointer alignment, compiles through Triton on the first call of a key, and afterwards
    calls Triton's C launcher with the stored function handle and constants.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.plans: dict[tuple, tuple] = {}

    def __call__(self, grid: int, args: tuple, key: tuple, constexprs, num_warps: int) -> None:
        """``constexprs()`` gives the kernel's constexpr arguments; it is only called to compile."""
        first = args[0]
        if _INTERPRETING or not first.is_cuda:  # Triton's interpreter (the tests)
            self.kernel[(grid,)](*args, **constexprs(), num_warps=num_warps)
            return
        device = first.get_device()
        key = (device, num_warps, key, *(a.data_ptr() % 16 == 0 for a in args if isinstance(a, torch.Tensor)))
        plan = self.plans.get(key)
        if plan is None:
            values = constexprs()
            compiled = self.kernel[(grid,)](*args, **values, num_warps=num_warps)
            self.plans[key] = self._plan(compiled, [values[name] for name in self.kernel.arg_names[len(args):]])
            return
        launch, function, flags, packed_metadata, tail = plan
        stream = torch._C._cuda_getCurrentRawStream(device)
        if flags is None:  # a kernel that needs scratch memory: Triton's own launcher allocates it
            launch(grid, 1, 1, stream, function, packed_metadata, None, None, None, *args, *tail)
        else:
            launch(grid, 1, 1, stream, function, *flags, None, None, packed_metadata, None, None, None, *args, *tail)

    @staticmethod
    def _plan(compiled, tail: list) -> tuple:
        launcher = compiled.run  # Triton's CudaLauncher: a wrapper around the compiled C ``launch``
        if getattr(launcher, "global_scratch_size", 1) or getattr(launcher, "profile_scratch_size", 1):
            return compiled.run, compiled.function, None, compiled.packed_metadata, tail
        flags = (launcher.launch_cooperative_grid, launcher.launch_pdl)
        return launcher.launch, compiled.function, flags, compiled.packed_metadata, tail


@functools.lru_cache(maxsize=None)
def _fp32_reciprocal(divisor: float) -> float:
    """ATen's CUDA division by a Python number multiplies by this (the fp32 reciprocal)."""
    return float(np.float32(1.0) / np.float32(divisor))


_EPS = float(torch.finfo(torch.bfloat16).smallest_normal)
_FP32_EPS = float(torch.finfo(torch.float32).smallest_normal)
_per_token_launcher = _Launcher(_per_token_kernel)
_per_group_launcher = _Launcher(_per_group_kernel)
_learned_launcher = _Launcher(_learned_kernel)


def _warps(block: int) -> int:
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def applies(x_dtype: torch.dtype, in_features: int, group_size: int) -> bool:
    return x_dtype == torch.bfloat16 and in_features <= MAX_ROW and group_size <= MAX_ROW


def per_token(x2d: torch.Tensor, qmin: int, qmax: int, grad: torch.Tensor | None = None, want_fq: bool = True,
              fp32_inverse: bool = False):
    """(fake-quantized x or None, gradient of x or None) for a contiguous bf16 (tokens, features) tensor;
    ``fp32_inverse``: as torchao computes under CUDA autocast."""
    rows, k = x2d.shape
    fq = torch.empty_like(x2d) if want_fq else x2d
    grad_x = torch.empty_like(x2d) if grad is not None else x2d
    block = triton.next_power_of_2(k)
    _per_token_launcher(
        rows, (x2d, grad if grad is not None else x2d, fq, grad_x, k), (k, qmin, qmax, want_fq, grad is not None, fp32_inverse),
        lambda: dict(QMIN=qmin, QMAX=qmax, INV_RANGE=_fp32_reciprocal(qmax - qmin), EPS=_EPS, BLOCK=block,
                     WRITE_FQ=want_fq, WRITE_GRAD=grad is not None, FP32_INVERSE=fp32_inverse,
                     INTERPRET=_INTERPRETING or not x2d.is_cuda),
        _warps(block),
    )
    return (fq if want_fq else None), (grad_x if grad is not None else None)


def per_group(w: torch.Tensor, group_size: int, qmin: int, qmax: int, grad: torch.Tensor | None = None):
    """The fake-quantized weight, or (with ``grad``, the gradient of that) the weight's gradient."""
    w = w.contiguous()
    n_groups = w.numel() // group_size
    block_g = triton.next_power_of_2(group_size)
    block_groups = max(1, 4096 // block_g)
    out = torch.empty_like(w)
    _per_group_launcher(
        triton.cdiv(n_groups, block_groups), (w, grad if grad is not None else w, out, n_groups, group_size),
        (n_groups, group_size, qmin, qmax, grad is not None),
        lambda: dict(QMIN=qmin, QMAX=qmax, HALF_RANGE=float(qmax - qmin) / 2, EPS=_FP32_EPS,
                     BLOCK_GROUPS=block_groups, BLOCK_G=block_g, BACKWARD=grad is not None,
                     INTERPRET=_INTERPRETING or not w.is_cuda),
        _warps(block_groups * block_g),
    )
    return out


def learned(w: torch.Tensor, scale: torch.Tensor, group_size: int, qmin: int, qmax: int, grad: torch.Tensor | None = None):
    """The weight fake-quantized with its learned fp32 scale; with ``grad`` (the gradient of that), the weight's
    gradient and the scale's (fp32, ``scale``'s shape)."""
    w = w.contiguous()
    scale = scale.float().contiguous()
    n_groups = w.numel() // group_size
    block_g = triton.next_power_of_2(group_size)
    block_groups = max(1, 4096 // block_g)
    out = torch.empty_like(w)
    grad_scale = torch.empty_like(scale) if grad is not None else scale
    _learned_launcher(
        triton.cdiv(n_groups, block_groups),
        (w, scale, grad.contiguous() if grad is not None else w, out, grad_scale, n_groups, group_size),
        (n_groups, group_size, qmin, qmax, grad is not None),
        lambda: dict(QMIN=qmin, QMAX=qmax, BLOCK_GROUPS=block_groups, BLOCK_G=block_g, BACKWARD=grad is not None,
                     INTERPRET=_INTERPRETING or not w.is_cuda),
        _warps(block_groups * block_g),
    )
    return (out, grad_scale) if grad is not None else out
