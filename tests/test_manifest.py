"""The bundle manifest (core/manifest.py): schema, version, and the sha256 of every listed file."""

from __future__ import annotations

import copy
import json

import pytest

from edgeqat.artifacts import hash_files
from edgeqat.errors import EdgeqatError
from edgeqat.manifest import FORMAT, FORMAT_VERSION, MANIFEST, load_bundle, manifest_schema, validate_manifest


def make_bundle(folder, **changes):
    """A bundle the way export/bundle.py writes one, with a stand-in program; ``changes`` patch the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pte").write_bytes(b"PTE\x00" + bytes(range(256)))
    (folder / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    (folder / "tokenizer_config.json").write_text("{}")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "program": "model.pte",
        "tokenizer": "tokenizer.json",
        "model": {
            "architecture": "LlamaForCausalLM",
            "model_type": "llama",
            "vocab_size": 256,
            "bos_id": 1,
            "eos_ids": [2],
            "max_seq_len": 64,
            "parameters": 12345,
        },
        "quantization": {"mode": "qat", "scheme": "8da4w", "group_size": 32, "embedding_bits": None},
        "export": {
            "method": "forward",
            "inputs": ["input_ids int64[1, seq_len]", "cache_position int64[seq_len]"],
            "dynamic_seq_len": True,
            "backend": "xnnpack",
            "linear_layers": 15,
            "linear_layers_delegated": 15,
            "delegate_calls": 3,
            "undelegated_ops": {},
            "config": {"max_seq_len": 64, "golden_prompts": ["hi"], "golden_new_tokens": 4},
        },
        "golden": [{"prompt": "hi", "prompt_ids": [5, 6], "generated_ids": [7, 8, 9, 2], "text": "abc"}],
        "versions": {"edgeqat": "0.1.0"},
        "source": {"converted": "/nowhere", "converted_files": {}},
        "files": hash_files(folder, exclude=(MANIFEST,)),
    }
    for dotted, value in changes.items():
        node = manifest
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


DELETE = object()


def _error(folder) -> str:
    with pytest.raises(EdgeqatError) as e:
        load_bundle(folder)
    return str(e.value)


def test_load_bundle_accepts_a_valid_bundle(tmp_path):
    written = make_bundle(tmp_path / "bundle")
    assert set(written["files"]) == {"model.pte", "tokenizer.json", "tokenizer_config.json"}
    assert load_bundle(tmp_path / "bundle") == written
    assert load_bundle(str(tmp_path / "bundle")) == written


def test_extra_keys_are_allowed(tmp_path):
    make_bundle(tmp_path / "b", **{"future_key": {"x": 1}, "model.new_field": "y"})
    assert load_bundle(tmp_path / "b")["future_key"] == {"x": 1}


def test_nullable_fields_accept_none(tmp_path):
    make_bundle(tmp_path / "b", **{"model.bos_id": None, "quantization.group_size": None})
    assert load_bundle(tmp_path / "b")["model"]["bos_id"] is None


def test_missing_bundle_folder(tmp_path):
    assert "bundle not found" in _error(tmp_path / "nope")


def test_missing_manifest(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).unlink()
    message = _error(tmp_path / "b")
    assert "no manifest.json" in message


def test_invalid_json(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).write_text('{"format": "edgeqat-bundle", ')
    message = _error(tmp_path / "b")
    assert "not valid JSON" in message and "re-export" in message


def test_binary_garbage_manifest(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).write_bytes(b"\xff\xfe\x00garbage")
    assert "is not UTF-8 text (byte 0xff at offset 0)" in _error(tmp_path / "b")


def test_not_an_edgeqat_manifest(tmp_path):
    make_bundle(tmp_path / "b", format="something-else")
    assert "not an edgeqat bundle manifest" in _error(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).write_text("[1, 2]")
    assert "not an edgeqat bundle manifest" in _error(tmp_path / "b")


def test_future_format_version_says_upgrade(tmp_path):
    make_bundle(tmp_path / "b", format_version=FORMAT_VERSION + 1)
    message = _error(tmp_path / "b")
    assert f"version {FORMAT_VERSION + 1}" in message
    assert "upgrade edgeqat" in message


@pytest.mark.parametrize(
    "key",
    ["program", "files", "golden", "model.max_seq_len", "model.eos_ids", "quantization.scheme", "export.method"],
)
def test_missing_key(tmp_path, key):
    make_bundle(tmp_path / "b", **{key: DELETE})
    message = _error(tmp_path / "b")
    assert f"manifest {key} is missing; re-export the bundle" in message


def test_missing_golden_key(tmp_path):
    make_bundle(tmp_path / "b", golden=[{"prompt": "hi", "prompt_ids": [1], "text": "x"}])
    assert "manifest golden[0].generated_ids is missing" in _error(tmp_path / "b")


@pytest.mark.parametrize(
    "key,value",
    [
        ("format_version", "1"),
        ("model.vocab_size", "256"),
        ("model.vocab_size", True),  # a bool is not an int
        ("model.eos_ids", 2),
        ("model.bos_id", 1.5),
        ("export.dynamic_seq_len", "yes"),
        ("quantization", "8da4w"),
        ("files", ["model.pte"]),
        ("golden", {"prompt": "hi"}),
    ],
)
def test_wrong_type(tmp_path, key, value):
    make_bundle(tmp_path / "b", **{key: value})
    message = _error(tmp_path / "b")
    assert message.startswith(f"manifest {key}: ") and message.endswith("; re-export the bundle")
    assert "is not of type" in message or "is not valid under any of the given schemas" in message


def test_program_not_listed_in_files(tmp_path):
    written = make_bundle(tmp_path / "b")
    files = dict(written["files"])
    del files["model.pte"]
    make_bundle(tmp_path / "b", files=files)
    assert "program names 'model.pte' but 'files' does not list it" in _error(tmp_path / "b")


def test_listed_file_missing(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / "model.pte").unlink()
    message = _error(tmp_path / "b")
    assert "failed verification" in message and "model.pte: missing" in message


def test_changed_file(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / "tokenizer.json").write_text('{"model": {"type": "Unigram"}}')
    message = _error(tmp_path / "b")
    assert "tokenizer.json: sha256 differs" in message


def test_path_escaping_the_bundle(tmp_path):
    (tmp_path / "secret.pte").write_bytes(b"outside")
    written = make_bundle(tmp_path / "b")
    files = dict(written["files"])
    files["../secret.pte"] = files.pop("model.pte")
    make_bundle(tmp_path / "b", program="../secret.pte", files=files)
    message = _error(tmp_path / "b")
    assert "../secret.pte: path escapes the folder" in message


def test_validate_manifest_walks_the_whole_schema(tmp_path):
    written = make_bundle(tmp_path / "b")
    assert validate_manifest(copy.deepcopy(written)) == written
    schema = manifest_schema()
    for key in schema["required"]:
        broken = copy.deepcopy(written)
        del broken[key]
        with pytest.raises(EdgeqatError):
            validate_manifest(broken)
        for sub in schema["properties"][key].get("required", []):
            broken = copy.deepcopy(written)
            del broken[key][sub]
            with pytest.raises(EdgeqatError, match=f"manifest {key}.{sub} is missing"):
                validate_manifest(broken)


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"format_version": 0}, "format version 0 never existed"),
        ({"model.vocab_size": 0}, "model.vocab_size: 0 is less than the minimum of 1"),
        ({"model.max_seq_len": 1}, "model.max_seq_len: 1 is less than the minimum of 2"),
        ({"model.eos_ids": [2, 999]}, "model.eos_ids: 999 is not below vocab_size 256"),
        ({"model.bos_id": -1}, "model.bos_id"),
        ({"golden": [{"prompt": "hi", "prompt_ids": ["5"], "generated_ids": [7], "text": "a"}]},
         "golden[0].prompt_ids[0]: '5' is not of type 'integer'"),
        ({"golden": [{"prompt": "hi", "prompt_ids": [], "generated_ids": [7], "text": "a"}]},
         "golden[0].prompt_ids: [] should be non-empty"),
        ({"golden": [{"prompt": "hi", "prompt_ids": [5], "generated_ids": [256], "text": "a"}]},
         "golden[0].generated_ids: 256 is not below vocab_size 256"),
        ({"golden": [{"prompt": "hi", "prompt_ids": [5] * 40, "generated_ids": [7] * 30, "text": "a"}]},
         "golden[0]: 40 prompt and 30 generated ids do not fit max_seq_len 64"),
        ({"source": "/somewhere"}, "source: '/somewhere' is not of type 'object'"),
        ({"program": "model\x00.pte"}, "program: 'model\\x00.pte' is not a path inside the bundle, without NUL bytes"),
        ({"export.method": ""}, "export.method: '' should be non-empty"),
        ({"export.linear_layers_delegated": 16}, "export.linear_layers_delegated (16) is more than linear_layers (15)"),
        ({"quantization.mode": "int3"}, "quantization.mode: 'int3' is not one of"),
        ({"quantization.embedding_bits": 2}, "quantization.embedding_bits: 2 is not one of"),
    ],
)
def test_values_out_of_range_are_refused_with_their_path(tmp_path, changes, fragment):
    make_bundle(tmp_path / "b", **changes)
    message = _error(tmp_path / "b")
    assert fragment in message and message.endswith("re-export the bundle"), message


def test_a_file_digest_that_is_not_a_sha256(tmp_path):
    written = make_bundle(tmp_path / "b")
    make_bundle(tmp_path / "b", files={**written["files"], "model.pte": "ABC"})
    assert "files.model.pte: 'ABC' is not a sha256, 64 lowercase hex digits" in _error(tmp_path / "b")


def test_pathologically_nested_manifest(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in _error(tmp_path / "b")


def test_a_huge_wrong_value_does_not_hide_the_problem(tmp_path):
    make_bundle(tmp_path / "b", golden={"prompt": "x" * 10_000})
    message = _error(tmp_path / "b")
    assert "is not of type 'array'" in message and len(message) < 200


def test_bundle_path_that_is_a_file(tmp_path):
    (tmp_path / "model.pte").write_bytes(b"PTE")
    assert "bundle " in _error(tmp_path / "model.pte") and "is a file, not a folder" in _error(tmp_path / "model.pte")
