"""The ONNX model of a bundle: written beside the `.pte` from the same converted model, and described in the
manifest (its file, its inputs and outputs, how its weights are stored) so that a reader can check it."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import torch

from edgeqat.errors import EdgeqatError
from edgeqat.export.onnx.graph import MS_DOMAIN, OPSET, decoder_graph
from edgeqat.export.rope import head_dim_of

ONNX_PROGRAM = "model.onnx"
ONNX_DATA = "model.onnx.data"  # the weights, when the protobuf would pass its 2 GB limit
PROTOBUF_LIMIT = 1_800_000_000


def io_description(layers: int, kv_heads: int, head_dim: int, vocab_size: int) -> dict:
    """The graph's inputs and outputs as the manifest records them (name -> [element type, shape])."""
    past = ["batch_size", kv_heads, "past_sequence_length", head_dim]
    present = ["batch_size", kv_heads, "total_sequence_length", head_dim]
    inputs = {"input_ids": ["int64", ["batch_size", "sequence_length"]],
              "attention_mask": ["int64", ["batch_size", "total_sequence_length"]]}
    outputs = {"logits": ["float32", ["batch_size", "sequence_length", vocab_size]]}
    for i in range(layers):
        for kind in ("key", "value"):
            inputs[f"past_key_values.{i}.{kind}"] = ["float32", past]
            outputs[f"present.{i}.{kind}"] = ["float32", present]
    return {"inputs": inputs, "outputs": outputs}


class OnnxModel:
    """A built ONNX decoder and its manifest section, saved into the bundle's folder by ``save``."""

    def __init__(self, proto, section: dict):
        self.proto, self.section = proto, section

    def save(self, folder: Path) -> None:
        import onnx

        start = time.perf_counter()
        external = self.proto.ByteSize() >= PROTOBUF_LIMIT
        onnx.save_model(self.proto, Path(folder) / ONNX_PROGRAM, save_as_external_data=external, location=ONNX_DATA)
        self.section["external_data"] = ONNX_DATA if external else None
        self.section["seconds"]["save"] = round(time.perf_counter() - start, 2)
        self.proto = None  # its weights are on disk now


def build_onnx(model, max_seq_len: int, accuracy_level: int) -> OnnxModel:
    """The ONNX decoder of the converted ``model``, checked with ONNX's checker."""
    import onnx

    start = time.perf_counter()
    proto = decoder_graph(model, max_seq_len, accuracy_level)
    if proto.ByteSize() < PROTOBUF_LIMIT:  # the checker takes a larger model only as a file
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as e:
            raise EdgeqatError(f"the ONNX graph built from this model fails ONNX's checker: {str(e).splitlines()[0]}") from None
    config = model.config
    head_dim = head_dim_of(config)
    ops = collections.Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)
    section = {
        "file": ONNX_PROGRAM,
        "opset": OPSET,
        "domains": ["ai.onnx", MS_DOMAIN],
        "cache": "past_present",  # past_key_values.* in, present.* out: the cache grows with the context
        "max_seq_len": max_seq_len,
        "layers": config.num_hidden_layers,
        "kv_heads": config.num_key_value_heads,
        "head_dim": head_dim,
        **io_description(config.num_hidden_layers, config.num_key_value_heads, head_dim, config.vocab_size),
        "accuracy_level": accuracy_level,
        "linear_layers": sum(isinstance(m, torch.nn.Linear) for m in model.modules()),
        "linear_layers_block_quantized": ops[f"{MS_DOMAIN}::MatMulNBits"],
        "ops": dict(sorted(ops.items())),
        "seconds": {"build": round(time.perf_counter() - start, 2)},
    }
    return OnnxModel(proto, section)
