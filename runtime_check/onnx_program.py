"""A bundle's ONNX model in ONNX Runtime (CPU execution provider): forward(tokens[1, T], positions[T]) ->
logits[1, T, V], keeping the past/present KV cache between calls, like PteProgram's method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeqat.errors import EdgeqatError

TYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}


def _shape_problem(described: dict, found: dict) -> str | None:
    """How the model's inputs or outputs (name -> (type, shape)) differ from the manifest's; named sizes are free."""
    for name, (dtype, shape) in described.items():
        if name not in found:
            return f"{name!r} is missing"
        found_type, found_shape = found[name]
        fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int)]
        if found_type != dtype or len(found_shape) != len(shape) or any(found_shape[i] != d for i, d in fixed):
            return f"{name!r} is {found_type}{list(found_shape)}, the manifest says {dtype}{shape}"
    extra = sorted(set(found) - set(described))
    return f"{extra[0]!r} is not in the manifest" if extra else None


class OnnxProgram:
    """The ONNX model of a bundle whose files load_bundle has verified."""

    def __init__(self, bundle_dir: Path, manifest: dict, threads: int):
        import onnx
        import onnxruntime as ort

        self.section = section = manifest["onnx"]
        path = Path(bundle_dir) / section["file"]
        try:
            onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as e:
            raise EdgeqatError(f"{path.name} fails ONNX's checker ({str(e).splitlines()[0]}); re-export the bundle") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise EdgeqatError(f"ONNX Runtime cannot load {path.name}: {str(e).splitlines()[0]}; re-export the bundle") from None
        for kind, described, found in (
            ("input", section["inputs"], self._session.get_inputs()),
            ("output", section["outputs"], self._session.get_outputs()),
        ):
            problem = _shape_problem(described, {a.name: (TYPES.get(a.type, a.type), a.shape) for a in found})
            if problem:
                raise EdgeqatError(f"{path.name}'s {kind}s do not match the manifest ({problem}); re-export the bundle")
        self.max_seq_len = section["max_seq_len"]
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._cache_names = [n for n in section["inputs"] if n.startswith("past_key_values.")]
        self._cache: list[np.ndarray] = []
        self.reset()

    def reset(self) -> None:
        shape = (1, self.section["kv_heads"], 0, self.section["head_dim"])
        self._cache = [np.zeros(shape, np.float32) for _ in self._cache_names]

    @property
    def cached(self) -> int:
        return self._cache[0].shape[2]

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        start, end = int(positions[0]), int(positions[-1]) + 1
        if end > self.max_seq_len:
            raise EdgeqatError(f"sequence of {end} tokens exceeds the ONNX model's max_seq_len {self.max_seq_len}")
        if start > self.cached:
            raise EdgeqatError(f"position {start} skips past the {self.cached} cached positions")
        if start < self.cached:  # a new sequence, or a rewind: the cache keeps positions before start
            self._cache = [c[:, :, :start] for c in self._cache]
        feeds = {"input_ids": tokens.to(torch.int64).numpy(), "attention_mask": np.ones((1, end), np.int64)}
        feeds.update(zip(self._cache_names, self._cache))
        out = self._session.run(self._outputs, feeds)
        self._cache = out[1:]
        return torch.from_numpy(out[0])
