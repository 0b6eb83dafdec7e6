"""Reading a user's JSON document (a bundle manifest, device results) and checking it against its JSON
Schema: every problem is one line naming the file, and a schema problem says where it is (a JSON path)
and what is wrong, with the offending value shortened so that the point of the line is never cut off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from edgeqat.config import shown
from edgeqat.errors import EdgeqatError
from edgeqat.paths import require_file


def load_json(path: str | Path, what: str, fix: str = "") -> Any:
    """The parsed document at ``path``; ``fix`` ends each error line (what the user should do)."""
    path = require_file(path, what)
    hint = f"; {fix}" if fix else ""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise EdgeqatError(f"{what} {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}){hint}") from None
    except json.JSONDecodeError as e:
        raise EdgeqatError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}){hint}") from None
    except RecursionError:
        raise EdgeqatError(f"{what} {path} is nested too deeply to be read{hint}") from None


def json_path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(error) -> str:
    if error.validator == "pattern" and "description" in error.schema:  # a regex says little to a person
        return f"{shown(error.instance)} is not {error.schema['description']}"
    message = " ".join(error.message.split())
    full = repr(error.instance)
    if message.startswith(full):  # jsonschema starts with the whole value, however large
        message = shown(error.instance) + message[len(full):]
    return message


def schema_problem(schema: dict[str, Any], data: Any) -> str | None:
    """The most relevant violation of ``schema`` as 'json.path: what is wrong', or None."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = list(validator.iter_errors(data))
    error = best_match(errors)
    if error is None:
        return None
    # Of siblings with the same problem (items of one list), name the first, as a reader would find it.
    parent = list(error.absolute_path)[:-1]
    error = next((e for e in errors if e.validator == error.validator and list(e.absolute_path)[:-1] == parent
                  and len(e.absolute_path) == len(error.absolute_path)), error)
    parts = list(error.absolute_path)
    if error.validator == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        return f"{json_path([*parts, missing])} is missing"
    return f"{json_path(parts) or 'the top level'}: {_message(error)}"
