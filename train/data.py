"""Loading a fine-tuning or evaluation dataset with `datasets`: hub id, local file or folder.

Rows are either plain text (a ``text`` column, or the column the config names) or chat conversations
(a ``messages`` column of ``{"role", "content"}`` dicts, rendered with the model's chat template by TRL).
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeqat.config import shown
from edgeqat.errors import EdgeqatError, first_line
from edgeqat.paths import resolve_source

FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv"}


def _check_utf8(path: Path) -> None:
    """`datasets` fails on a byte that is not UTF-8 with no file or line; name both first."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise EdgeqatError(f"{path}, line {number}: not UTF-8 text (byte {line[e.start]:#04x}); "
                                   "save the file as UTF-8") from None


def _check_jsonl(path: Path) -> int:
    """`datasets` reports a bad line with no line number; find it first. Returns the number of rows."""
    rows = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise EdgeqatError(f"{path}, line {number}: malformed JSON ({e.msg}); fix or remove that line") from None
            except RecursionError:
                raise EdgeqatError(f"{path}, line {number}: JSON nested too deeply; fix or remove that line") from None
            if not isinstance(row, dict):
                raise EdgeqatError(f"{path}, line {number}: expected a JSON object per line, got {type(row).__name__}")
            rows += 1
    return rows


def _is_empty(path: Path) -> bool:
    """`datasets` fails on an empty file with an unhelpful message (StopIteration, ...); spot it first."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return path.stat().st_size > 0 and pq.ParquetFile(path).metadata.num_rows == 0
        except Exception as e:  # pyarrow's ArrowInvalid: not a parquet file, or a truncated one
            raise EdgeqatError(f"dataset {path} is not a readable parquet file ({first_line(e)})") from None
    _check_utf8(path)
    if path.suffix == ".jsonl":
        return _check_jsonl(path) == 0
    return path.stat().st_size == 0


def _root_cause(e: BaseException) -> BaseException:
    """`datasets` wraps the reader's error ("An error occurred while generating the dataset"); the cause
    at the bottom of the chain is what the user can act on."""
    seen = {id(e)}
    while (inner := e.__cause__ or e.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        e = inner
    return e


def _check_text_values(data, name: str) -> None:
    """Rows whose text is a number or a list are a mistake in the data, not text to skip silently."""
    feature = data.features["text"]
    if getattr(feature, "dtype", None) in ("string", "large_string"):
        return  # Arrow typed the column as strings: every value is one (or null)
    for i, value in enumerate(data["text"]):
        if value is not None and not isinstance(value, str):
            raise EdgeqatError(f"dataset {name!r}, row {i + 1}: the text {shown(value)} is of type "
                               f"{type(value).__name__}, not a string; fix that row")


def load_text_dataset(name: str, default: Path, text_column: str = "text", split: str = "train",
                      column_option: str | None = "--text-column"):
    """Returns a `datasets.Dataset` with a ``text`` or a ``messages`` column and at least one row.

    ``split`` applies to hub datasets and dataset folders (e.g. ``train_sft``); a single file is one split.
    ``column_option`` is the option that names the text column for the command at hand (None: none has it).
    """
    import datasets

    source = resolve_source(name, default, "dataset")
    path = Path(source)
    try:
        if path.is_file():
            kind = FORMATS.get(path.suffix)
            if kind is None:
                raise EdgeqatError(f"dataset {path}: unsupported file type {path.suffix!r}; use {', '.join(FORMATS)}")
            if _is_empty(path):
                raise EdgeqatError(f"dataset {name!r} has no usable rows ({path} is empty)")
            data = datasets.load_dataset(kind, data_files=str(path), split="train")
        elif path.is_dir():
            if not any(p.is_file() and not p.name.startswith(".") for p in path.rglob("*")):
                raise EdgeqatError(f"dataset folder {path} holds no data files; put .jsonl/.parquet/... files in it")
            data = datasets.load_dataset(str(path), split=split)
        else:
            data = datasets.load_dataset(source, split=split)
    except EdgeqatError:
        raise
    except Exception as e:  # datasets raises many types; the user needs the cause at the bottom of the chain
        cause = _root_cause(e)
        where = f" ({path})" if path.exists() else ""
        detail = first_line(cause) if cause is e else f"{type(cause).__name__}: {first_line(cause)}"
        raise EdgeqatError(f"cannot load dataset {name!r}{where}: {detail}") from None

    if "messages" in data.column_names:
        data = data.select_columns(["messages"])
    elif text_column in data.column_names:
        data = data.select_columns([text_column])
        if text_column != "text":
            data = data.rename_column(text_column, "text")
        _check_text_values(data, name)
        data = data.filter(lambda row: row["text"] is not None and row["text"].strip() != "")
    else:
        fix = f"name the text column with {column_option}" if column_option else "give plain text in a 'text' column"
        raise EdgeqatError(
            f"dataset {name!r} has no {text_column!r} or 'messages' column (it has: {', '.join(data.column_names)}); {fix}"
        )
    if len(data) == 0:
        raise EdgeqatError(f"dataset {name!r} has no usable rows")
    return data


def token_windows(tokenizer, dataset: str, default: Path, count: int, length: int) -> list:
    """Up to ``count`` non-overlapping windows of ``length`` tokens of plain text (rows joined by EOS)."""
    import torch

    data = load_text_dataset(dataset, default, column_option=None)
    if "text" not in data.column_names:
        raise EdgeqatError(f"evaluation dataset {dataset!r} must be plain text (a 'text' column)")
    ids: list[int] = []
    for text in data["text"]:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if len(ids) >= count * length:
            break
    windows = [torch.tensor(ids[i : i + length]) for i in range(0, len(ids) - length + 1, length)][:count]
    if not windows:
        raise EdgeqatError(f"evaluation dataset {dataset!r} has fewer than {length} tokens; give more held-out text")
    return windows
