"""The ONNX model: convert's integers carried over exactly, logits through ONNX Runtime against eager for each
scheme and family, and the bundle's ONNX model through `edgeqat check` (its gates, and bad input)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli
from onnx import numpy_helper
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from edgeqat.artifacts import sha256_file
from edgeqat.config import QuantConfig
from edgeqat.export.onnx.export import build_onnx
from edgeqat.export.onnx.graph import decoder_graph
from edgeqat.export.onnx.weights import BlockQuantized, block_quantized, unpack
from edgeqat.manifest import MANIFEST
from edgeqat.runtime_check.onnx_program import OnnxProgram
from edgeqat.train.quantize import quantize_ptq

MAX_SEQ_LEN = 48


def tiny(family: str, tie: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=64, tie_word_embeddings=tie)
    if family == "qwen3":
        return Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


def quantized(family: str, scheme: str | None, tie: bool = False, embedding_bits: int | None = 4) -> torch.nn.Module:
    model = tiny(family, tie)
    if scheme:
        quantize_ptq(model, QuantConfig(scheme=scheme, embedding_bits=embedding_bits), warn=lambda _: None)
    return model


def program_of(model, tmp_path, accuracy_level: int = 0) -> OnnxProgram:
    built = build_onnx(model, MAX_SEQ_LEN, accuracy_level)
    built.save(tmp_path)
    return OnnxProgram(tmp_path, {"onnx": built.section}, threads=1)


def greedy_both(model, program, ids: list[int], steps: int):
    """Prefill then one token at a time through the ONNX model; the eager logits of the whole sequence."""
    logits = [program.forward(torch.tensor([ids]), torch.arange(len(ids)))[0]]
    sequence = list(ids)
    for _ in range(steps):
        sequence.append(int(logits[-1][-1].argmax()))
        logits.append(program.forward(torch.tensor([[sequence[-1]]]), torch.tensor([len(sequence) - 1]))[0])
    with torch.no_grad():
        eager = model(torch.tensor([sequence[:-1]])).logits[0]
    return torch.cat(logits)[: len(sequence) - 1], eager


def test_the_onnx_file_holds_converts_integers_and_scales_exactly(tmp_path):
    model = quantized("llama", "8da4w", tie=False)
    built = build_onnx(model, MAX_SEQ_LEN, 4)
    built.save(tmp_path)
    saved = {t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "model.onnx").graph.initializer}
    checked = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            key = name.removeprefix("model.")
            weight = block_quantized(module.weight)
            stored = BlockQuantized(saved[f"{key}.qweight"], saved[f"{key}.scales"], weight.bits, weight.block_size)
            assert np.array_equal(unpack(stored), module.weight.qdata.numpy()), name  # element for element
            assert np.array_equal(stored.scales, module.weight.scale.float().numpy()), name
            checked += 1
    table = model.model.embed_tokens.weight
    packed = saved["embed_tokens.qweight"].reshape(table.qdata.shape[0], -1, 16)
    assert np.array_equal(unpack(BlockQuantized(packed, saved["embed_tokens.scales"], 4, 32)), table.qdata.numpy())
    assert checked == 15 and built.section["linear_layers_block_quantized"] == 15


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_round_trips_and_matches_onnx_runtimes_dequantization(bits):
    from torchao.quantization import IntxUnpackedToInt8Tensor

    rng = np.random.default_rng(bits)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = torch.from_numpy(rng.integers(low, high + 1, size=(24, 64)).astype(np.int8))
    scale = torch.rand(24, 2) * 0.1 + 0.01
    weight = IntxUnpackedToInt8Tensor(q, scale, torch.zeros(24, 2, dtype=torch.int8), torch.int8 if bits == 8 else torch.int4,
                                      [1, 32], torch.float32, None)
    packed = block_quantized(weight)
    assert packed.bits == bits and np.array_equal(unpack(packed), q.numpy())
    linear = torch.nn.Linear(64, 24, bias=False)
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    x = torch.randn(3, 64)
    from edgeqat.export.onnx.graph import _Builder  # one MatMulNBits node, run alone

    builder = _Builder(0)
    out = builder.linear("x", linear, "w")
    graph = onnx.helper.make_graph(builder.g.nodes, "one", [onnx.helper.make_tensor_value_info("x", 1, [3, 64])],
                                   [onnx.helper.make_tensor_value_info(out, 1, [3, 24])], builder.g.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 23), onnx.helper.make_opsetid("com.microsoft", 1)])
    import onnxruntime as ort

    y = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    expected = x @ (q.float().reshape(24, 2, 32) * scale[..., None]).reshape(24, 64).T
    assert np.allclose(y, expected.numpy(), atol=1e-4)


@pytest.mark.parametrize("family, scheme, tie, embedding_bits, cosine", [
    ("llama", "8da4w", True, 4, 0.999),
    ("llama", "8da8w", False, 8, 0.9999),
    ("qwen3", "8da4w", False, 4, 0.999),
    ("llama", None, False, None, 0.999999),  # the float reference: plain MatMul and Gather
])
def test_onnx_runtime_decodes_like_the_eager_model(tmp_path, family, scheme, tie, embedding_bits, cosine):
    model = quantized(family, scheme, tie, embedding_bits)
    program = program_of(model, tmp_path, accuracy_level=0)  # float activations: only the layout can differ
    onnx_logits, eager = greedy_both(model, program, [5, 17, 42, 99, 3], steps=6)
    cos = torch.nn.functional.cosine_similarity(onnx_logits, eager, dim=-1)
    assert cos.min() > cosine, cos
    # random weights leave near-ties, which eager's int8 activations (ONNX here: float) may break either way
    assert (onnx_logits.argmax(-1) == eager.argmax(-1)).float().mean() >= 0.8
    # a rewind (the check's teacher-forced replay starts again at position 0) gives the same logits
    again = program.forward(torch.tensor([[5, 17, 42]]), torch.arange(3))[0]
    assert torch.allclose(again, onnx_logits[:3], atol=1e-4)


def test_a_tied_table_is_stored_once(tmp_path):
    tied, untied = quantized("llama", "8da4w", tie=True), quantized("llama", "8da4w", tie=False)
    names = lambda m: {t.name for t in decoder_graph(m, MAX_SEQ_LEN, 4).graph.initializer}  # noqa: E731
    assert "lm_head.qweight" not in names(tied) and "lm_head.qweight" in names(untied)


def test_a_family_the_builder_does_not_know_is_one_line():
    from transformers import GPT2Config, GPT2LMHeadModel

    from edgeqat.errors import EdgeqatError

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(EdgeqatError, match="knows the decoder layers of llama, mistral, qwen2, qwen3, not 'gpt2'"):
        decoder_graph(model, 16, 4)


# -- the bundle's ONNX model through `edgeqat check` (the made session exports pte,onnx) ------------------


def test_the_bundle_lists_the_onnx_model_and_check_gates_it(made):
    manifest = json.loads((made["bundle"] / MANIFEST).read_text())
    assert manifest["onnx"]["file"] == "model.onnx" and "model.onnx" in manifest["files"]
    assert manifest["onnx"]["cache"] == "past_present" and manifest["onnx"]["accuracy_level"] == 4
    report = json.loads((made["report"] / "report.json").read_text())
    onnx_gates = [g for g in report["gates"] if "ONNX" in g["name"]]
    assert len(onnx_gates) == 4 and all(g["passed"] for g in onnx_gates[:3])
    assert report["onnx"]["comparisons"]["eager converted (cpu)"]["cosine_mean"] > 0.999
    assert report["onnx"]["latency"]["decode_tokens_per_s"] > 0
    assert "ONNX model vs references" in (made["report"] / "report.md").read_text()


def _damaged_copy(made, tmp_path, damage):
    bundle = tmp_path / "bundle"
    shutil.copytree(made["bundle"], bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    damage(bundle, manifest)
    manifest["files"]["model.onnx"] = sha256_file(bundle / "model.onnx")  # the files verify: the ONNX model is bad
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    return bundle


def test_an_onnx_file_that_fails_the_checker_is_bad_input(capsys, isolated, made, tmp_path):
    def damage(bundle, manifest):
        model = onnx.load(bundle / "model.onnx")
        model.graph.node[0].input[0] = "no_such_tensor"
        onnx.save(model, bundle / "model.onnx")

    bundle = _damaged_copy(made, tmp_path, damage)
    line = run_cli(capsys, "check", str(bundle), "--output", "report", "--reference", str(made["conv"]))
    assert "model.onnx fails ONNX's checker" in line


def test_an_onnx_model_whose_shapes_differ_from_the_manifest_is_bad_input(capsys, isolated, made, tmp_path):
    def damage(bundle, manifest):
        manifest["onnx"]["inputs"]["past_key_values.0.key"][1][1] += 1  # kv heads

    bundle = _damaged_copy(made, tmp_path, damage)
    line = run_cli(capsys, "check", str(bundle), "--output", "report", "--reference", str(made["conv"]))
    assert "model.onnx's inputs do not match the manifest ('past_key_values.0.key' is float32" in line
