"""The models a bundle's `.pte` is compared with: the eager converted model on CPU (the exact source of
the export), and on a GPU when there is one the converted and the unquantized fine-tuned model."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgeqat.config import REFERENCE_DEVICES
from edgeqat.errors import EdgeqatError, first_line
from edgeqat.generation import Forward
from edgeqat.paths import relative_path, require_folder

log = logging.getLogger("edgeqat")
CONVERTED_CPU = "eager converted (cpu)"  # the gates compare with this one: the model the bundle was exported from


@dataclass
class Reference:
    name: str
    kind: str  # "converted" | "unquantized"
    device: torch.device
    path: Path
    model: torch.nn.Module
    _decoders: dict = field(default_factory=dict, repr=False)

    def describe(self, report_dir: Path) -> dict:
        """What the report says of it; a local folder as a path relative to ``report_dir`` (no machine path)."""
        dtype = next(self.model.parameters()).dtype
        path = Path(self.path)
        where = relative_path(path, report_dir) if path.exists() else str(self.path)
        return {"name": self.name, "kind": self.kind, "device": self.device.type,
                "dtype": str(dtype).removeprefix("torch."), "path": where}

    def logits(self, window: torch.Tensor) -> torch.Tensor:
        """[T, V] float32 logits on the CPU for a 1-D window of token ids (no KV cache)."""
        with torch.no_grad():
            return self.model(input_ids=window[None].to(self.device)).logits[0].float().cpu()

    def cached_forward(self, max_seq_len: int) -> Forward:
        """forward(tokens, positions) -> logits over a static KV cache, the way the `.pte` decodes; CPU tensors
        in and out."""
        from edgeqat.export.kv_cache import eager_forward, reference_decoder

        if max_seq_len not in self._decoders:
            self._decoders[max_seq_len] = eager_forward(reference_decoder(self.model, max_seq_len))
        on_device = self._decoders[max_seq_len]
        return lambda tokens, positions: on_device(tokens.to(self.device), positions.to(self.device)).float().cpu()


def reference_device(choice: str) -> torch.device | None:
    """The GPU for the GPU references, or None when they are not wanted or there is no GPU."""
    if choice not in REFERENCE_DEVICES:
        raise EdgeqatError(f"check.reference_device must be one of {', '.join(REFERENCE_DEVICES)}, not {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise EdgeqatError("check.reference_device is cuda but no CUDA GPU is available; use auto or cpu")
    return torch.device("cuda") if choice != "cpu" and torch.cuda.is_available() else None


def load_references(bundle_dir: Path, manifest: dict, converted: str | None, unquantized: str | None,
                    device_choice: str):
    """(converted model on CPU, tokenizer, references, skipped references as {name, why}).

    Without ``converted``, the manifest's ``source.converted`` (relative to the bundle) names it, and the
    converted model's record names its unquantized checkpoint (relative to the converted model).

    The converted model must be the very one the bundle was exported from (its files' sha256s match the
    manifest), or the comparison would measure the wrong thing.
    """
    from transformers import AutoModelForCausalLM

    from edgeqat.train.convert import load_converted, read_checked_record

    gpu = reference_device(device_choice)
    if converted:
        converted_dir = require_folder(converted, "--reference", "give the converted model's folder")
    else:
        converted_dir = Path(bundle_dir) / manifest.get("source", {}).get("converted", "")
        if not (converted_dir / "edgeqat.json").is_file():
            raise EdgeqatError(
                f"the converted model behind this bundle was not found ({converted_dir}); pass it with --reference"
            )
    record = read_checked_record(converted_dir, "convert")
    if record["files"] != manifest.get("source", {}).get("converted_files"):
        raise EdgeqatError(f"{converted_dir} is not the converted model this bundle was exported from (its files differ)")
    model, tokenizer, _ = load_converted(converted_dir, record)
    references = [Reference(CONVERTED_CPU, "converted", torch.device("cpu"), converted_dir, model)]
    skipped: list[dict] = []
    if gpu is not None:
        try:
            references.append(Reference("converted (cuda)", "converted", gpu, converted_dir, copy.deepcopy(model).to(gpu)))
        except (RuntimeError, NotImplementedError) as e:  # a quantized tensor layout without a CUDA kernel
            skipped.append({"name": "converted (cuda)", "why": first_line(e)})
            log.warning("the converted model does not run on the GPU (%s); comparing with it on the CPU only", skipped[-1]["why"])

    if unquantized:  # asked for by name: it must be there
        float_dir = require_folder(unquantized, "--unquantized", "give the unquantized checkpoint's folder")
        if not (float_dir / "config.json").is_file():
            raise EdgeqatError(f"--unquantized {float_dir} has no config.json; give a checkpoint folder (edgeqat train's output)")
    else:
        float_dir = converted_dir / record["source"] if record.get("source") else Path("")
    if (float_dir / "config.json").is_file():
        # On a GPU in bf16, the way it was fine-tuned; on the CPU in fp32 (bf16 matmuls are slow there).
        dtype, where = (torch.bfloat16, gpu) if gpu is not None else (torch.float32, torch.device("cpu"))
        try:
            float_model = AutoModelForCausalLM.from_pretrained(float_dir, dtype=dtype).to(where).eval()
        except Exception as e:  # the unquantized checkpoint is not sha-checked: its weights may be damaged
            raise EdgeqatError(f"cannot load the unquantized model {float_dir} ({first_line(e)}); "
                               "pass a good one with --unquantized") from None
        references.append(Reference(f"unquantized ({where.type})", "unquantized", where, float_dir, float_model))
    else:
        skipped.append({"name": "unquantized", "why": f"not found ({float_dir}); pass it with --unquantized"})
        log.warning("unquantized model not found (%s): it is left out of the comparison", float_dir)
    return model, tokenizer, references, skipped
