"""A tied int4 embedding stored once in the `.pte` (export/tied_embedding.py, export/shared_segments.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeqat.config import QuantConfig
from edgeqat.export.kv_cache import export_decoder, program_decoder
from edgeqat.export.tied_embedding import OutputLayerBytesEmbedding, share_tied_embedding, xnnpack_int4_bytes
from edgeqat.native_output import held_output
from edgeqat.train.quantize import quantize_ptq

VOCAB, HIDDEN = 256, 64  # a 256 x 64 int4 table is 8 KiB, above shared_segments.MIN_SHARED_BYTES


def _tiny(tied: bool = True):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen3", hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=VOCAB,
                                  max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                  tie_word_embeddings=tied)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def test_the_packed_bytes_are_xnnpacks_own_serialization_of_the_output_layer():
    from executorch.backends.xnnpack.operators.node_visitor import NodeVisitor

    q = torch.randint(-8, 8, (6, 10), dtype=torch.int8)
    assert torch.equal(xnnpack_int4_bytes(q), NodeVisitor.convert_to_qc4w(q))


def test_the_lookup_equals_the_dequantized_table_row_for_row():
    q = torch.randint(-8, 8, (50, 64), dtype=torch.int8)
    scale = torch.rand(50, 2)
    ids = torch.tensor([[0, 49, 7, 7, 13]])
    expected = (q.float().view(50, 2, 32) * scale[..., None]).view(50, 64)[ids]
    assert torch.equal(OutputLayerBytesEmbedding(q, scale)(ids), expected)


def test_a_tied_int4_embedding_is_swapped_with_the_same_values():
    model = _tiny()
    quantize_ptq(model, QuantConfig(embedding_bits=4))
    ids = torch.randint(0, VOCAB, (1, 9))
    before = model.get_input_embeddings()(ids)
    assert share_tied_embedding(model)
    assert isinstance(model.get_input_embeddings(), OutputLayerBytesEmbedding)
    assert torch.equal(model.get_input_embeddings()(ids), before)


@pytest.mark.parametrize("tied,embedding_bits", [(False, 4), (True, 8)], ids=["untied", "int8-embedding"])
def test_an_embedding_unlike_its_output_layer_keeps_its_own_table(tied, embedding_bits):
    model = _tiny(tied)
    quantize_ptq(model, QuantConfig(embedding_bits=embedding_bits))
    assert not share_tied_embedding(model)
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)


def test_the_pte_stores_the_tied_table_once_and_computes_the_same_logits():
    from executorch.runtime import Runtime

    from edgeqat.export.lower import lower_to_xnnpack

    model = _tiny()
    quantize_ptq(model, QuantConfig(embedding_bits=4))

    def lowered(store_once: bool):  # lowering changes the program it is given: one export each
        program = export_decoder(program_decoder(copy.deepcopy(model), 32), 32)
        return lower_to_xnnpack(program, {"get_max_seq_len": 32}, store_repeats_once=store_once)

    once, twice = lowered(True), lowered(False)
    assert twice.bytes_stored_once == 0
    assert once.bytes_stored_once >= VOCAB * HIDDEN // 2 and len(once.program) <= len(twice.program) - once.bytes_stored_once
    outputs = []
    with held_output():
        for program in (once.program, twice.program):
            method = Runtime.get().load_program(program).load_method("forward")
            prefill = method.execute([torch.tensor([[3, 14, 15, 9, 200]]), torch.arange(5)])[0].clone()
            decode = method.execute([torch.tensor([[255]]), torch.tensor([5])])[0].clone()
            outputs.append((prefill, decode))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


def test_a_program_without_repeated_bytes_comes_back_unchanged():
    from edgeqat.export.lower import lower_to_xnnpack
    from edgeqat.export.shared_segments import store_repeated_data_once

    model = _tiny(tied=False)
    quantize_ptq(model, QuantConfig(embedding_bits=4))
    program = lower_to_xnnpack(export_decoder(program_decoder(model, 32), 32), {"get_max_seq_len": 32})
    assert program.bytes_stored_once == 0
    again = store_repeated_data_once(program.program)
    assert again.program == program.program and again.bytes_stored_once == 0


def test_a_tied_float_table_is_stored_once_and_counted_whole():
    """A bf16-mode export: the fp32 table and the float output layer's XNNPACK weights are the same bytes; the
    count is the table's (the file shrinks by it plus alignment), which the device estimate takes."""
    from edgeqat.export.lower import lower_to_xnnpack
    from edgeqat.runtime_check.device_estimate import decode_bytes_per_token

    model = _tiny()
    lowered = lower_to_xnnpack(export_decoder(program_decoder(model, 32), 32), {"get_max_seq_len": 32},
                               store_repeats_once=True)
    assert lowered.bytes_stored_once == VOCAB * HIDDEN * 4
    config = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16}
    estimate = decode_bytes_per_token(len(lowered.program), config, None, 16, bytes_stored_once=lowered.bytes_stored_once)
    assert estimate.embedding_table_bytes == 0
