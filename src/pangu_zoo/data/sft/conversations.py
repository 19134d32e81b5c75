"""Instruction data as conversations: three JSON-lines formats read into one internal form.

* `pangu` (the openPangu demo's): {"meta_prompt": str | [str], "data": [{"role": "user"|"tool"|"assistant",
  "content": str}, ...]}
* `alpaca`: {"instruction", "input" (optional), "output", "system" (optional), "history" (optional
  [[user, assistant], ...])}; the user turn is the instruction, then a newline and the input when there is one
* `sharegpt`: {"conversations": [{"from": "human"|"user"|"gpt"|"assistant"|"system"|"tool"|"observation",
  "value": str}, ...], "system" (optional)}

`auto` picks the format of each line by its keys. A conversation is system prompts plus turns that alternate
(user or tool) and assistant, as the demo's handler consumes them in pairs; a line that is not one raises
`DataError` naming the file and line.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pangu_zoo.errors import DataError

INPUT_FORMATS = ("auto", "pangu", "alpaca", "sharegpt")
PROMPT_ROLES = ("user", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "observation": "tool"}


class _BadRecord(ValueError):
    """What is wrong with one record; `read_conversations` adds the file and line."""


@dataclass(frozen=True)
class Turn:
    role: str  # user, tool or assistant
    content: str


@dataclass(frozen=True)
class Conversation:
    """System prompts (maybe none) and turns alternating (user or tool) and assistant."""

    system: tuple[str, ...]
    turns: tuple[Turn, ...]

    def messages(self) -> list[dict]:
        """As chat messages ([{"role", "content"}]) for the chat template."""
        return ([{"role": "system", "content": text} for text in self.system]
                + [{"role": turn.role, "content": turn.content} for turn in self.turns])


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise _BadRecord(f"{what} must be a string, got {type(value).__name__}")
    return value


def _checked(system: Sequence[str], turns: Sequence[Turn]) -> Conversation:
    if not turns:
        raise _BadRecord("the conversation has no turns")
    for number, turn in enumerate(turns):
        expected = "assistant" if number % 2 else "user or tool"
        if (turn.role == "assistant") != bool(number % 2) or turn.role not in (*PROMPT_ROLES, "assistant"):
            raise _BadRecord(f"turn {number} is {turn.role!r} where {expected} belongs: turns must alternate "
                             f"(user or tool) and assistant, starting with user or tool")
    if turns[-1].role != "assistant":
        raise _BadRecord(f"the last turn is {turns[-1].role!r}; a conversation ends with an assistant turn")
    return Conversation(tuple(system), tuple(turns))


def from_pangu(record: dict) -> Conversation:
    meta = record.get("meta_prompt", [])
    system = [meta] if isinstance(meta, str) else meta
    if not isinstance(system, list):
        raise _BadRecord("meta_prompt must be a string or a list of strings")
    system = [_text(text, f"meta_prompt[{i}]") for i, text in enumerate(system)]
    data = record.get("data")
    if not isinstance(data, list):
        raise _BadRecord("data must be a list of {\"role\", \"content\"} turns")
    turns = []
    for number, turn in enumerate(data):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise _BadRecord(f"data[{number}] must be an object with role and content")
        turns.append(Turn(_text(turn["role"], f"data[{number}].role"),
                          _text(turn["content"], f"data[{number}].content")))
    return _checked(system, turns)


def from_alpaca(record: dict) -> Conversation:
    system = [_text(record["system"], "system")] if record.get("system") else []
    turns = []
    history = record.get("history") or []
    if not isinstance(history, list):
        raise _BadRecord("history must be a list of [user, assistant] pairs")
    for number, pair in enumerate(history):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise _BadRecord(f"history[{number}] must be a [user, assistant] pair")
        turns += [Turn("user", _text(pair[0], f"history[{number}][0]")),
                  Turn("assistant", _text(pair[1], f"history[{number}][1]"))]
    user = _text(record.get("instruction"), "instruction")
    extra = _text(record.get("input") or "", "input")
    turns += [Turn("user", f"{user}\n{extra}" if extra else user),
              Turn("assistant", _text(record.get("output"), "output"))]
    return _checked(system, turns)


def from_sharegpt(record: dict) -> Conversation:
    system = [_text(record["system"], "system")] if record.get("system") else []
    messages = record.get("conversations")
    if not isinstance(messages, list):
        raise _BadRecord("conversations must be a list of {\"from\", \"value\"} messages")
    turns = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or "from" not in message or "value" not in message:
            raise _BadRecord(f"conversations[{number}] must be an object with from and value")
        source = message["from"]
        if source not in SHAREGPT_ROLES:
            raise _BadRecord(f"conversations[{number}].from is {source!r}; expected one of "
                             f"{', '.join(SHAREGPT_ROLES)}")
        content = _text(message["value"], f"conversations[{number}].value")
        if SHAREGPT_ROLES[source] == "system":
            if turns:
                raise _BadRecord(f"conversations[{number}] is a system message after the first turn")
            system.append(content)
        else:
            turns.append(Turn(SHAREGPT_ROLES[source], content))
    return _checked(system, turns)


READERS = {"pangu": from_pangu, "alpaca": from_alpaca, "sharegpt": from_sharegpt}


def detect_format(record: dict) -> str:
    """The format of one record, by its keys."""
    if "data" in record:
        return "pangu"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    raise _BadRecord(f"cannot tell the format from the keys {sorted(record)[:8]}: expected \"data\" (pangu), "
                     f"\"conversations\" (sharegpt) or \"instruction\" and \"output\" (alpaca)")


def parse_record(record, input_format: str = "auto") -> Conversation:
    """One JSON object -> `Conversation`; `ValueError` says what is wrong."""
    if not isinstance(record, dict):
        raise _BadRecord(f"expected a JSON object, got {type(record).__name__}")
    return READERS[detect_format(record) if input_format == "auto" else input_format](record)


def read_conversations(path: str | Path, input_format: str = "auto") -> Iterator[Conversation]:
    """The conversations of a JSON-lines file, in order (blank lines skipped); `DataError` names file:line."""
    if input_format not in INPUT_FORMATS:
        raise DataError(f"unknown input format {input_format!r}; choose one of {', '.join(INPUT_FORMATS)}")
    path = Path(path)
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8").removeprefix("\ufeff") if number == 1 else raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{number}: invalid UTF-8 at byte {error.start} of the line; "
                                f"convert the file to UTF-8") from None
            if not line.strip():
                continue
            try:
                yield parse_record(json.loads(line), input_format)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
            except _BadRecord as error:
                raise DataError(f"{path}:{number}: {error} (--input_format {input_format})") from None


def find_inputs(patterns: Sequence[str]) -> list[Path]:
    """Files named by `patterns` (paths or globs, `**` allowed), each pattern's matches sorted, no repeats."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(Path(name) for name in glob.glob(pattern, recursive=True) if Path(name).is_file())
        if not matches:
            raise DataError(f"--input {pattern!r} matched no files; check the path (quote globs)")
        files += [match for match in matches if match not in files]
    return files
