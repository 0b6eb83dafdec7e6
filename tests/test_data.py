"""Loading fine-tuning / evaluation text (train/data.py) from local files, and its error messages."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edgeqat.errors import EdgeqatError
from edgeqat.train.data import load_text_dataset


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Keeps the `datasets` cache of these throwaway files out of the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("hf-datasets-cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", cache / "downloads" / "extracted")
    return cache


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(path, **kwargs):
    # ``default`` is only used for the name "default"; any path will do here.
    return load_text_dataset(str(path), default=path, **kwargs)


def test_jsonl_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha", "id": 1}, {"text": "beta", "id": 2}])
    data = load(path)
    assert data.column_names == ["text"]
    assert data["text"] == ["alpha", "beta"]


def test_blank_lines_in_jsonl_are_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "alpha"}\n\n   \n{"text": "beta"}\n')
    assert load(path)["text"] == ["alpha", "beta"]


def test_empty_and_non_string_texts_are_dropped(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "keep"}, {"text": ""}, {"text": "   "}, {"text": None}])
    assert load(path)["text"] == ["keep"]


def test_txt_one_row_per_line(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("first line\n\nsecond line\n")
    data = load(path)
    assert data.column_names == ["text"]
    assert data["text"] == ["first line", "second line"]


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["p1", "p2", "p3"], "score": [1, 2, 3]}), path)
    data = load(path)
    assert data.column_names == ["text"]
    assert data["text"] == ["p1", "p2", "p3"]


def test_json_array_and_csv(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"text": "j1"}, {"text": "j2"}]))
    assert load(tmp_path / "d.json")["text"] == ["j1", "j2"]
    (tmp_path / "d.csv").write_text("text,label\nc1,0\nc2,1\n")
    assert load(tmp_path / "d.csv")["text"] == ["c1", "c2"]


def test_folder_of_jsonl(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"text": "f1"}, {"text": "f2"}])
    assert sorted(load(folder)["text"]) == ["f1", "f2"]


def test_default_name_uses_the_default_path(tmp_path):
    path = write_jsonl(tmp_path / "embedded.jsonl", [{"text": "from the default"}])
    assert load_text_dataset("default", default=path)["text"] == ["from the default"]


def test_messages_column_is_kept(tmp_path):
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation, "text": "ignored", "id": 7}])
    data = load(path)
    assert data.column_names == ["messages"]
    assert data[0]["messages"] == conversation


def test_custom_text_column_is_renamed_to_text(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"body": "b1", "text": 5}, {"body": "b2", "text": 6}])
    data = load(path, text_column="body")
    assert data.column_names == ["text"]
    assert data["text"] == ["b1", "b2"]


def test_malformed_jsonl_line_is_reported_with_its_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "also ok"}\n{"text": "broken\n{"text": "fine"}\n')
    with pytest.raises(EdgeqatError) as e:
        load(path)
    message = str(e.value)
    assert "line 4" in message
    assert "malformed JSON" in message
    assert str(path) in message


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n["a", "list"]\n')
    with pytest.raises(EdgeqatError, match="line 2: expected a JSON object per line, got list"):
        load(path)


@pytest.mark.parametrize(
    "name,content",
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n"),
        ("empty.txt", ""),
        ("blank.txt", "\n   \n\n"),
        ("empty-texts.jsonl", '{"text": ""}\n{"text": "  "}\n'),
    ],
)
def test_empty_dataset(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(EdgeqatError) as e:
        load(path)
    assert "has no usable rows" in str(e.value)


def test_empty_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": pa.array([], type=pa.string())}), path)
    with pytest.raises(EdgeqatError, match="has no usable rows"):
        load(path)


def test_dataset_without_a_text_column_lists_its_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(EdgeqatError) as e:
        load(path)
    message = str(e.value)
    assert "no 'text' or 'messages' column" in message
    assert "prompt" in message and "completion" in message
    assert "--text-column" in message


def test_named_text_column_that_does_not_exist(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "t"}])
    with pytest.raises(EdgeqatError, match="no 'body' or 'messages' column .*it has: text"):
        load(path, text_column="body")


def test_missing_local_path(tmp_path):
    with pytest.raises(EdgeqatError) as e:
        load(tmp_path / "nope.jsonl")
    message = str(e.value)
    assert "dataset not found" in message
    assert "nope.jsonl" in message


def test_missing_relative_path():
    with pytest.raises(EdgeqatError, match="dataset not found: ./no/such/data"):
        load_text_dataset("./no/such/data", default=None)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "d.xml"
    path.write_text("<text>x</text>")
    with pytest.raises(EdgeqatError, match="unsupported file type '.xml'"):
        load(path)
