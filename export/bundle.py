"""`edgeqat export`: a converted checkpoint -> a bundle folder (model.pte + tokenizer + manifest.json)."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from edgeqat.artifacts import atomic_dir, hash_files, versions, write_json_atomic
from edgeqat.config import ExportConfig, to_dict
from edgeqat.errors import EdgeqatError
from edgeqat.export.kv_cache import eager_forward, export_decoder, program_decoder
from edgeqat.export.lower import lower_to_xnnpack
from edgeqat.export.rope import rotation_as_linear
from edgeqat.generation import greedy, prompt_ids
from edgeqat.manifest import FORMAT, FORMAT_VERSION, MANIFEST
from edgeqat.native_output import held_output
from edgeqat.ownership import check_output
from edgeqat.paths import relative_path
from edgeqat.schemes import export_blocker, get_scheme
from edgeqat.train.convert import load_converted, read_checked_record

log = logging.getLogger("edgeqat")
PROGRAM = "model.pte"
TOKENIZER = "tokenizer.json"
TOKENIZER_EXTRAS = ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def runner_metadata(config, tokenizer, max_seq_len: int) -> dict:
    """The constant methods ExecuTorch's LLM runner reads from the `.pte`."""
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    bos = config.bos_token_id if config.bos_token_id is not None else tokenizer.bos_token_id
    return {
        "get_max_seq_len": max_seq_len,
        "get_max_context_len": max_seq_len,
        "get_vocab_size": config.vocab_size,
        "get_bos_id": bos if bos is not None else -1,
        "get_eos_ids": eos_ids,
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
        "use_sdpa_with_kv_cache": True,  # llama::update_cache + llama::custom_sdpa (export/llm_ops.py)
    }


def check_tokenizer_matches(tokenizer, vocab_size: int) -> None:
    if len(tokenizer) > vocab_size:
        raise EdgeqatError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab_size}; "
            f"use the tokenizer the model was trained with"
        )


def golden_prompt_ids(tokenizer, prompts: list[str], max_seq_len: int) -> list[list[int]]:
    """The prompts' token ids, each checked to leave room in the KV cache for at least one new token."""
    return [prompt_ids(tokenizer, prompt, max_seq_len, "golden prompt") for prompt in prompts]


@contextmanager
def weights_dequantized_once() -> Iterator[None]:
    """Within this block each torchao int weight is dequantized once and reused.

    torchao's eager quantized linears and embeddings dequantize their weights on every call, which made the
    golden outputs of a 0.6 B model the slowest part of its export. The cached value is the same function of
    the same tensors, so every logit is the same float (tests/test_export_ops.py checks it bit for bit).
    """
    from torchao.quantization import IntxUnpackedToInt8Tensor

    original = IntxUnpackedToInt8Tensor.dequantize
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (the tensor, kept alive; its float value)

    def dequantize(self):
        if id(self) not in cache:
            cache[id(self)] = (self, original(self))
        return cache[id(self)][1]

    IntxUnpackedToInt8Tensor.dequantize = dequantize
    try:
        yield
    finally:
        IntxUnpackedToInt8Tensor.dequantize = original
        cache.clear()


def golden_outputs(decoder, tokenizer, prompts: list[str], new_tokens: int, max_seq_len: int) -> list[dict]:
    """Greedy continuations of the prompts by ``decoder`` eagerly: the very module the `.pte` is exported from."""
    golden = []
    forward = eager_forward(decoder)
    # The LLM ops' eager kernels log an error line per call for want of a temporary allocator they do not need.
    with weights_dequantized_once(), held_output():
        for prompt, ids in zip(prompts, golden_prompt_ids(tokenizer, prompts, max_seq_len)):
            out = greedy(forward, ids, new_tokens, max_seq_len)
            golden.append({"prompt": prompt, "prompt_ids": ids, "generated_ids": out, "text": tokenizer.decode(out)})
    return golden


def export_bundle(converted_dir: str | Path, bundle_dir: str | Path, export: ExportConfig) -> Path:
    converted_dir, bundle_dir = Path(converted_dir), Path(bundle_dir)
    check_output(bundle_dir, "export", {"converted model": converted_dir})
    record = read_checked_record(converted_dir, "convert")
    if record["quantized"]:
        blocker = export_blocker(get_scheme(record["scheme"]), record["group_size"])
        if blocker:
            raise EdgeqatError(f"scheme {record['scheme']} cannot be exported: {blocker}")
    if "pte" not in export.formats:
        raise EdgeqatError("a bundle always holds the .pte (its manifest and the apps are built on it): "
                           "use --format pte or --format pte,onnx")
    model, tokenizer, _ = load_converted(converted_dir, record)
    config = model.config
    check_tokenizer_matches(tokenizer, config.vocab_size)
    golden_prompt_ids(tokenizer, export.golden_prompts, export.max_seq_len)  # before the export's minutes of work
    onnx_model = None
    if "onnx" in export.formats:  # from the converted model itself, before the .pte's export rewrites it
        from edgeqat.export.onnx.export import build_onnx

        log.info("ONNX model (MatMulNBits accuracy_level %d)", export.onnx_accuracy_level)
        onnx_model = build_onnx(model, export.max_seq_len, export.onnx_accuracy_level)
    linear_layers = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    # The model's parameters, counted before the export unwraps torchao's tensors into data, scales and zero
    # points; a tied output layer once, as in the checkpoint (the converted model holds it as a second tensor).
    parameters = sum(p.numel() for p in model.parameters())
    if getattr(config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        head = model.get_output_embeddings().weight
        if head is not model.get_input_embeddings().weight:
            parameters -= head.numel()

    decoder = program_decoder(model, export.max_seq_len)
    with rotation_as_linear(decoder, config):  # the golden outputs and the .pte: one model
        log.info("golden outputs for %d prompts", len(export.golden_prompts))
        start = time.perf_counter()
        golden = golden_outputs(decoder, tokenizer, export.golden_prompts, export.golden_new_tokens, export.max_seq_len)
        golden_done = time.perf_counter()
        log.info("torch.export (max_seq_len %d)", export.max_seq_len)
        program = export_decoder(decoder, export.max_seq_len)
        exported = time.perf_counter()
    log.info("lowering to XNNPACK")
    meta = runner_metadata(config, tokenizer, export.max_seq_len)
    lowered = lower_to_xnnpack(program, meta, workers=export.lowering_workers or None)
    seconds = {"golden_outputs": round(golden_done - start, 2), "torch_export": round(exported - golden_done, 2),
               **lowered.seconds}
    delegated_linears = linear_layers - lowered.linear_layers_undelegated
    log.info("XNNPACK took %d of %d linear layers (%d delegate calls)", delegated_linears, linear_layers, lowered.delegated_calls)

    with atomic_dir(bundle_dir, "export") as tmp:
        (tmp / PROGRAM).write_bytes(lowered.program)
        if onnx_model is not None:
            onnx_model.save(tmp)
        for name in (TOKENIZER, *TOKENIZER_EXTRAS):
            if (converted_dir / name).is_file():
                shutil.copy(converted_dir / name, tmp / name)
        if not (tmp / TOKENIZER).is_file():
            raise EdgeqatError(f"{converted_dir} has no {TOKENIZER}; the runner needs a Hugging Face fast tokenizer")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "program": PROGRAM,
            "tokenizer": TOKENIZER,
            "model": {
                "architecture": (config.architectures or [type(model).__name__])[0],
                "model_type": config.model_type,
                "vocab_size": config.vocab_size,
                "bos_id": meta["get_bos_id"] if meta["get_bos_id"] >= 0 else None,
                "eos_ids": meta["get_eos_ids"],
                "max_seq_len": export.max_seq_len,
                "parameters": parameters,
            },
            "quantization": {
                "mode": record["mode"],
                "scheme": record["scheme"],
                "group_size": record["group_size"],
                "embedding_bits": record["embedding_bits"],
            },
            "export": {
                "method": "forward",
                "inputs": ["input_ids int64[1, seq_len]", "cache_position int64[seq_len]"],
                "dynamic_seq_len": True,
                "backend": "xnnpack",
                "linear_layers": linear_layers,
                "linear_layers_delegated": delegated_linears,
                "delegate_calls": lowered.delegated_calls,
                "undelegated_ops": lowered.undelegated_ops,
                "bytes_stored_once": lowered.bytes_stored_once,
                "seconds": seconds,  # where the export's time went (this host)
                "config": to_dict(export),
            },
            "golden": golden,
            **({"onnx": onnx_model.section} if onnx_model is not None else {}),
            "versions": versions(),
            # Relative to the bundle: no path of this machine (a bundle moved alone needs --reference).
            "source": {"converted": relative_path(converted_dir, bundle_dir),
                       "converted_files": record["files"]},
            "files": hash_files(tmp, exclude=(MANIFEST,)),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    size = (bundle_dir / PROGRAM).stat().st_size
    log.info("bundle %s: %s %.2f MB; export %s", bundle_dir, PROGRAM, size / 1e6,
             ", ".join(f"{stage.replace('_', ' ')} {s:.0f} s" for stage, s in seconds.items()))
    return bundle_dir
