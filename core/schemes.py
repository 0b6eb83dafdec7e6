"""The scheme registry: each quantization scheme is named once here, with its three faces.

1. ``qat_prepare_config`` - the torchao config that inserts fake quantization for training,
2. ``base_config`` - the torchao config that quantizes for real (QAT convert and PTQ use it),
3. ``lowering`` - how ExecuTorch runs it (the XNNPACK delegate, and which linears it should take).

Like torchao, a scheme is a config object, applied with ``quantize_(model, config)``; this module only
decides which config, with which granularity, on which layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from edgeqat.config import EMBEDDING_BITS
from edgeqat.errors import EdgeqatError

PER_CHANNEL = 0  # group_size 0 means one scale per output channel


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    weight_bits: int
    dynamic_int8_activations: bool
    default_group_size: int
    # Why ExecuTorch cannot run this scheme correctly yet (None: it can); export refuses with this reason.
    export_blocker: str | None = None


SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("8da4w", "int8 dynamic per-token activations, int4 symmetric weights", 4, True, 32),
        Scheme("8da8w", "int8 dynamic per-token activations, int8 symmetric weights", 8, True, PER_CHANNEL),
        Scheme(
            "4w",
            "int4 weight-only (activations stay float)",
            4,
            False,
            32,
            export_blocker=(
                "executorch 1.4.1's XNNPACK delegate runs torchao's int4 weight-only linears as if every weight scale "
                "were 1 (measured: the .pte equals the eager model with its scales set to 1, cosine 1.0000, and "
                "the eager torchao model at cosine 0.85), and ExecuTorch has no kernel for the dequantize_affine "
                "it leaves outside; see docs/xnnpack_4w.md. Train and convert 4w for evaluation, export 8da4w for phones"
            ),
        ),
    )
}


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise EdgeqatError(f"unknown scheme {name!r}; choose one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def export_blocker(scheme: Scheme, group_size: int) -> str | None:
    """Why ExecuTorch cannot run ``scheme`` at ``group_size`` (None: it can), so that the export refuses at
    once instead of failing inside XNNPACK minutes later."""
    if scheme.export_blocker:
        return scheme.export_blocker
    if scheme.weight_bits == 8 and group_size != PER_CHANNEL:
        return (f"executorch 1.4.1's XNNPACK delegate takes 8-bit weights with one scale per output channel only "
                f"(it asserts 'Only 4b group quantization is supported'), and this model has groups of {group_size}; "
                f"train {scheme.name} with --group-size 0")
    return None


def _granularity(group_size: int):
    from torchao.quantization.granularity import PerAxis, PerGroup

    if group_size < 0:
        raise EdgeqatError(f"group size must be positive or 0 (per-channel), got {group_size}")
    return PerAxis(0) if group_size == PER_CHANNEL else PerGroup(group_size)


def base_config(scheme: Scheme, group_size: int):
    """The torchao config that quantizes a linear for real under ``scheme``."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig

    weight_dtype = torch.int4 if scheme.weight_bits == 4 else torch.int8
    if scheme.dynamic_int8_activations:
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=weight_dtype, weight_granularity=_granularity(group_size))
    return IntxWeightOnlyConfig(weight_dtype=weight_dtype, granularity=_granularity(group_size))


INT4_EMBEDDING_GROUP_SIZE = 32  # an int4 embedding with one scale per row loses too much


def embedding_bits_of(bits: int | None) -> int | None:
    """A config's ``embedding_bits`` as records store it: None for a float embedding (0 or None)."""
    return bits or None


def embedding_group_size(bits: int | None, linear_group_size: int | None) -> int | None:
    """The embedding's group size for ``bits``, from the linears' (resolved) one: theirs, except that a
    4-bit embedding is grouped by 32 when the linears are per-channel. None for a float embedding."""
    if not bits:
        return None
    if bits == 4 and not linear_group_size:
        return INT4_EMBEDDING_GROUP_SIZE
    return linear_group_size or PER_CHANNEL


def embedding_config(bits: int, group_size: int):
    """Weight-only quantization of the token embedding (4 or 8 bit)."""
    from torchao.quantization import IntxWeightOnlyConfig

    if bits not in EMBEDDING_BITS or not bits:
        raise EdgeqatError(f"embedding bits must be 4 or 8, got {bits}")
    return IntxWeightOnlyConfig(weight_dtype=torch.int4 if bits == 4 else torch.int8, granularity=_granularity(group_size))


def qat_prepare_config(base, range_learning: bool = False):
    """QAT's prepare step for ``base``; with ``range_learning`` the weight scales are static and trained
    (torchao's range learning: set by ``initialize_fake_quantizers``, then nn.Parameters)."""
    import dataclasses

    from torchao.quantization.qat import QATConfig
    from torchao.quantization.qat.fake_quantize_config import _infer_fake_quantize_configs

    if not range_learning:
        return QATConfig(base, step="prepare")
    activation, weight = _infer_fake_quantize_configs(base)
    # fp32 scales: in bf16 an AdamW step smaller than 1/256 of a scale would round away
    weight = dataclasses.replace(weight, is_dynamic=False, range_learning=True, scale_precision=torch.float32)
    return QATConfig(activation_config=activation, weight_config=weight, step="prepare")


def qat_convert_config(base):
    from torchao.quantization.qat import QATConfig

    return QATConfig(base, step="convert")


def linear_filter(
    model: torch.nn.Module, group_size: int, skip_indivisible: bool, warn: Callable[[str], None]
) -> Callable[[torch.nn.Module, str], bool]:
    """The ``filter_fn`` for quantize_: every nn.Linear whose in_features the group size divides.

    A layer the group size does not divide is an error naming the layer and the fix, or, with
    ``skip_indivisible``, is left in float with a warning.
    """
    skipped = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and group_size and module.in_features % group_size:
            if not skip_indivisible:
                raise EdgeqatError(
                    f"layer {name!r} has in_features={module.in_features}, not divisible by group size {group_size}; "
                    f"choose a group size that divides it (or 0 for per-channel), or pass --skip-indivisible "
                    f"to leave such layers unquantized"
                )
            skipped.add(name)
    if skipped:
        warn(f"left {len(skipped)} linear layer(s) unquantized (group size {group_size} does not divide them): "
             + ", ".join(sorted(skipped)))
    return lambda module, fqn: isinstance(module, torch.nn.Linear) and fqn not in skipped


def embedding_filter(module: torch.nn.Module, fqn: str) -> bool:
    return isinstance(module, torch.nn.Embedding)
