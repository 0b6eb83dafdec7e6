"""A bundle's `.pte` loaded with ExecuTorch's runtime: the raw method path, logits at every position."""

from __future__ import annotations

from pathlib import Path

import torch

from edgeqat.errors import EdgeqatError
from edgeqat.native_output import native_errors


class PteProgram:
    """forward(tokens[1, T], positions[T]) -> logits[1, T, V] through the `.pte`'s KV-cached method."""

    def __init__(self, bundle_dir: Path, manifest: dict):
        from executorch.runtime import Runtime

        from edgeqat.export.llm_ops import load_kernels

        load_kernels()
        path = Path(bundle_dir) / manifest["program"]
        with native_errors(lambda why: f"ExecuTorch cannot load {path}: {why}; re-export the bundle",
                           (RuntimeError, ValueError)):
            self._program = Runtime.get().load_program(path)
        method = manifest["export"]["method"]
        if method not in self._program.method_names:
            raise EdgeqatError(f"the manifest names the method {method!r} but {path.name} has only "
                               f"{', '.join(sorted(self._program.method_names))}; re-export the bundle")
        with native_errors(lambda why: f"ExecuTorch cannot load the method {method!r} of {path}: {why}; re-export "
                           "the bundle", (RuntimeError, ValueError)):
            self._method = self._program.load_method(method)
        self.max_seq_len = self._constant("get_max_seq_len")
        self.vocab_size = self._constant("get_vocab_size")
        model = manifest["model"]
        for name, in_program, in_manifest in (
            ("max_seq_len", self.max_seq_len, model["max_seq_len"]),
            ("vocab_size", self.vocab_size, model["vocab_size"]),
        ):
            if in_program != in_manifest:
                raise EdgeqatError(
                    f"the manifest says {name} {in_manifest} but {path.name} says {in_program}; the bundle's files "
                    f"come from different exports, re-export it"
                )

    def _constant(self, name: str) -> int:
        try:
            return int(self._program.load_method(name).execute([])[0])
        except (RuntimeError, ValueError, KeyError):  # KeyError: no such method
            raise EdgeqatError(f"the .pte has no {name} metadata method; re-export it with edgeqat export") from None

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if positions[-1] >= self.max_seq_len:
            raise EdgeqatError(f"sequence of {int(positions[-1]) + 1} tokens exceeds the bundle's max_seq_len {self.max_seq_len}")
        return self._method.execute([tokens, positions])[0]
