"""A Hugging Face decoder (Llama, Mistral, Qwen2, Qwen3) as an ONNX graph for ONNX Runtime, with a KV cache.

The layout is the one ONNX Runtime GenAI and optimum use: inputs ``input_ids`` [batch, sequence_length],
``attention_mask`` [batch, total_sequence_length] and ``past_key_values.{i}.key|value`` [batch, kv_heads,
past_sequence_length, head_dim]; outputs ``logits`` and ``present.{i}.key|value`` [batch, kv_heads,
total_sequence_length, head_dim]. The cache grows with the context (a past/present cache, not a static one):
ONNX Runtime's GroupQueryAttention then attends over the filled positions only, applies the rotary embedding
itself and needs no mask beyond the lengths, and a prefill and a one-token decode are the same graph.

Quantized linears are MatMulNBits and a quantized embedding GatherBlockQuantized (export/onnx/weights.py);
RMSNorm is ONNX's RMSNormalization (opset 23).
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeqat.errors import EdgeqatError
from edgeqat.export.onnx.weights import block_quantized
from edgeqat.export.rope import head_dim_of

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
OPSET = 23  # RMSNormalization
MS_DOMAIN = "com.microsoft"


def cache_names(layers: int) -> list[tuple[str, str, str, str]]:
    """(past key, past value, present key, present value) input and output names per layer."""
    return [(f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key", f"present.{i}.value")
            for i in range(layers)]


class _Graph:
    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        self._count += 1
        names = outputs if isinstance(outputs, list) else [f"{op_type.lower()}_{self._count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=f"{op_type}_{self._count}", domain=domain, **attrs))
        return names[0] if len(names) == 1 else names


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


class _Builder:
    def __init__(self, accuracy_level: int):
        self.g = _Graph()
        self.accuracy_level = accuracy_level
        self.table = None  # the embedding's block-quantized table, once built

    def linear(self, x: str, module: torch.nn.Linear, name: str, shared: tuple[str, str] | None = None,
               out: str | None = None) -> str:
        """``shared``: (packed, scales) initializers already holding this weight's values (a tied table);
        ``out``: the output's name (a graph output)."""
        outputs = [out] if out else 1
        bias = None if module.bias is None else self.g.constant(f"{name}.bias", _array(module.bias))
        weight = block_quantized(module.weight)
        if weight is None:  # a float weight: MatMul with its transpose
            weight_t = self.g.constant(f"{name}.weight_t", _array(module.weight).T)
            if bias is None:
                return self.g.op("MatMul", [x, weight_t], outputs=outputs)
            return self.g.op("Add", [self.g.op("MatMul", [x, weight_t]), bias], outputs=outputs)
        n, k = weight.shape
        if shared:  # the same bytes, seen as [N, k_blocks, blob]: ONNX Runtime folds the Reshape once at load
            packed = self.g.op("Reshape", [shared[0], self.g.constant(f"{name}.packed_shape", np.array(weight.packed.shape, np.int64))])
            inputs = [x, packed, shared[1]]
        else:
            inputs = [x, self.g.constant(f"{name}.qweight", weight.packed), self.g.constant(f"{name}.scales", weight.scales)]
        if bias is not None:
            inputs += ["", "", bias]
        return self.g.op("MatMulNBits", inputs, outputs=outputs, domain=MS_DOMAIN, K=k, N=n, bits=weight.bits,
                         block_size=weight.block_size, accuracy_level=self.accuracy_level)

    def rms_norm(self, x: str, module, name: str) -> str:
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
        return self.g.op("RMSNormalization", [x, self.g.constant(f"{name}.weight", _array(module.weight))],
                         axis=-1, epsilon=float(eps))

    def head_norm(self, x: str, module, name: str, heads: int, head_dim: int) -> str:
        """Qwen3's per-head RMSNorm of queries and keys, before the rotary embedding."""
        split = self.g.op("Reshape", [x, self.g.constant(f"{name}.split", np.array([0, 0, heads, head_dim], np.int64))])
        normed = self.rms_norm(split, module, name)
        return self.g.op("Reshape", [normed, self.g.constant(f"{name}.merge", np.array([0, 0, heads * head_dim], np.int64))])

    def embedding(self, ids: str, module) -> str:
        table = block_quantized(module.weight)
        self.table = table
        if table is None:
            return self.g.op("Gather", [self.g.constant("embed_tokens.weight", _array(module.weight)), ids])
        n, k = table.shape
        data = table.packed.reshape(n, -1)  # [vocab, hidden * bits / 8]: the rows' bytes, blocks in order
        return self.g.op("GatherBlockQuantized", [self.g.constant("embed_tokens.qweight", data), ids,
                                                  self.g.constant("embed_tokens.scales", table.scales)],
                         domain=MS_DOMAIN, bits=table.bits, block_size=table.block_size, gather_axis=0, quantize_axis=1)


def _same(a, b) -> bool:
    return (a.bits, a.block_size) == (b.bits, b.block_size) and np.array_equal(a.packed, b.packed) and np.array_equal(a.scales, b.scales)


def _rotary_caches(model, max_seq_len: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [max_seq_len, head_dim / 2] from the model's own rotary embedding (its scaling included)."""
    rotary = model.model.rotary_emb
    positions = torch.arange(max_seq_len)[None]
    probe = torch.zeros(1, max_seq_len, head_dim)
    with torch.no_grad():
        cos, sin = rotary(probe, positions)
    half = head_dim // 2
    if not (torch.allclose(cos[0, :, :half], cos[0, :, half:]) and torch.allclose(sin[0, :, :half], sin[0, :, half:])):
        raise EdgeqatError("the model's rotary embedding does not rotate halves (rotate_half); it has no ONNX form here")
    return _array(cos[0, :, :half]), _array(sin[0, :, :half])


def decoder_graph(model, max_seq_len: int, accuracy_level: int):
    """``model`` (a converted Hugging Face causal LM) as an ONNX ModelProto with a past/present KV cache."""
    config = model.config
    if config.model_type not in FAMILIES:
        raise EdgeqatError(f"the ONNX export knows the decoder layers of {', '.join(FAMILIES)}, not "
                           f"{config.model_type!r}; export --format pte")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = head_dim_of(config)
    layers = model.model.layers
    b = _Builder(accuracy_level)
    g = b.g

    mask_sum = g.op("ReduceSum", ["attention_mask", g.constant("axis_1", np.array([1], np.int64))], keepdims=0)
    seqlens_k = g.op("Cast", [g.op("Sub", [mask_sum, g.constant("one", np.array(1, np.int64))])], to=TensorProto.INT32)
    total = g.op("Cast", [g.op("Gather", [g.op("Shape", ["attention_mask"]), g.constant("index_1", np.array(1, np.int64))])],
                 to=TensorProto.INT32)
    cos, sin = _rotary_caches(model, max_seq_len, head_dim)
    cos, sin = g.constant("cos_cache", cos), g.constant("sin_cache", sin)

    hidden = b.embedding("input_ids", model.model.embed_tokens)
    for i, (layer, (past_k, past_v, present_k, present_v)) in enumerate(zip(layers, cache_names(len(layers)))):
        attn = layer.self_attn
        x = b.rms_norm(hidden, layer.input_layernorm, f"layers.{i}.input_layernorm")
        q = b.linear(x, attn.q_proj, f"layers.{i}.self_attn.q_proj")
        k = b.linear(x, attn.k_proj, f"layers.{i}.self_attn.k_proj")
        v = b.linear(x, attn.v_proj, f"layers.{i}.self_attn.v_proj")
        if getattr(attn, "q_norm", None) is not None:
            q = b.head_norm(q, attn.q_norm, f"layers.{i}.self_attn.q_norm", heads, head_dim)
            k = b.head_norm(k, attn.k_norm, f"layers.{i}.self_attn.k_norm", kv_heads, head_dim)
        out, _, _ = g.op("GroupQueryAttention", [q, k, v, past_k, past_v, seqlens_k, total, cos, sin],
                   outputs=[f"attention_{i}", present_k, present_v], domain=MS_DOMAIN,
                   num_heads=heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0,
                   scale=float(attn.scaling))
        hidden = g.op("Add", [hidden, b.linear(out, attn.o_proj, f"layers.{i}.self_attn.o_proj")])
        x = b.rms_norm(hidden, layer.post_attention_layernorm, f"layers.{i}.post_attention_layernorm")
        mlp = layer.mlp
        gate = b.linear(x, mlp.gate_proj, f"layers.{i}.mlp.gate_proj")
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), b.linear(x, mlp.up_proj, f"layers.{i}.mlp.up_proj")])
        hidden = g.op("Add", [hidden, b.linear(act, mlp.down_proj, f"layers.{i}.mlp.down_proj")])
    hidden = b.rms_norm(hidden, model.model.norm, "norm")
    head = block_quantized(model.lm_head.weight)
    tied = b.table is not None and head is not None and _same(b.table, head)  # one table in the file, not two
    b.linear(hidden, model.lm_head, "lm_head", shared=("embed_tokens.qweight", "embed_tokens.scales") if tied else None,
             out="logits")

    cache_shape = ["batch_size", kv_heads, "past_sequence_length", head_dim]
    present_shape = ["batch_size", kv_heads, "total_sequence_length", head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", config.vocab_size])]
    for past_k, past_v, present_k, present_v in cache_names(len(layers)):
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, cache_shape) for n in (past_k, past_v)]
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, present_shape) for n in (present_k, present_v)]
    graph = helper.make_graph(g.nodes, "edgeqat_decoder", inputs, outputs, g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
                             producer_name="edgeqat")
