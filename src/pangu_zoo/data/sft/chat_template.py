"""The openPangu chat template (formats.md §6.3): every turn is `<turn start><ROLE>：<content><turn end>`.

ROLE is 系统 (system), 用户 (user), 助手 (assistant), 工具 (tool) or 方法 (function), the colon full-width.
When the first message is not a system message an empty system turn comes first; the generation prompt is
`<turn start>助手：`. With openPangu's markers:

    [unused9]系统：[unused10][unused9]用户：你好[unused10][unused9]助手：

No MindSpore here: the server and the model families import this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from pangu_zoo.data.sft.markers import OPENPANGU_MARKERS, ChatMarkers, MarkerEncoder, markers_for
from pangu_zoo.errors import InputError

ROLE_NAMES = {"system": "系统", "user": "用户", "assistant": "助手", "tool": "工具", "function": "方法"}
ROLE_SEPARATOR = "："  # full-width colon


def role_prefix(role: str, markers: ChatMarkers = OPENPANGU_MARKERS) -> str:
    """`<turn start><ROLE>：`, the part of a turn before its content."""
    if role not in ROLE_NAMES:
        raise InputError(f"unknown chat role {role!r}; the template knows {', '.join(ROLE_NAMES)}")
    return f"{markers.turn_start}{ROLE_NAMES[role]}{ROLE_SEPARATOR}"


def turn_text(role: str, content: str, markers: ChatMarkers = OPENPANGU_MARKERS) -> str:
    """One whole turn: `<turn start><ROLE>：<content><turn end>`."""
    return f"{role_prefix(role, markers)}{content}{markers.turn_end}"


def generation_prompt(markers: ChatMarkers = OPENPANGU_MARKERS) -> str:
    """What a prompt ends with so that the model writes the assistant's turn."""
    return role_prefix("assistant", markers)


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = False,
                markers: ChatMarkers = OPENPANGU_MARKERS) -> str:
    """The template text of `messages` ([{"role", "content"}]), as openPangu's tokenizer_config renders it."""
    parts = []
    if not messages or messages[0].get("role") != "system":
        parts.append(turn_text("system", "", markers))
    for number, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, str):
            raise InputError(f"messages[{number}].content must be a string")
        parts.append(turn_text(message.get("role"), content, markers))
    if add_generation_prompt:
        parts.append(generation_prompt(markers))
    return "".join(parts)


def template_segments(messages: Sequence[dict], markers: ChatMarkers = OPENPANGU_MARKERS,
                      add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """`render_chat`'s text cut as the SFT handler encodes it (formats.md §6.4): (text, trained) pairs.

    The leading system turns form one segment; every other turn is one segment, except an assistant turn,
    whose prefix `<turn start>助手：` and whose `<content><turn end>` are separate segments, the second trained.
    Concatenating the texts gives `render_chat(messages, add_generation_prompt, markers)`.
    """
    leading = 0
    while leading < len(messages) and messages[leading].get("role") == "system":
        leading += 1
    system = messages[:leading] or [{"role": "system", "content": ""}]
    segments = [("".join(turn_text("system", m.get("content"), markers) for m in system), False)]
    for message in messages[leading:]:
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise InputError(f"a {role} message's content must be a string, got {type(content).__name__}")
        if role == "assistant":
            segments += [(role_prefix(role, markers), False), (content + markers.turn_end, True)]
        else:
            segments.append((turn_text(role, content, markers), False))
    if add_generation_prompt:
        segments.append((generation_prompt(markers), False))
    return segments


def encode_chat(messages: Sequence[dict], tokenizer, markers: ChatMarkers | None = None,
                add_generation_prompt: bool = True) -> list[int]:
    """Prompt ids of `messages` for generation: the template's segments encoded one by one with the markers as
    their ids, after the tokenizer's BOS when it has one: the ids the SFT data holds for the same turns.
    Stop generating at `MarkerEncoder(tokenizer, markers).turn_end_id`."""
    markers = markers or markers_for(tokenizer)
    encoder = MarkerEncoder(tokenizer, markers)
    bos_id = getattr(tokenizer, "bos_id", None)
    ids = [bos_id] if bos_id is not None else []
    for text, _ in template_segments(messages, markers, add_generation_prompt):
        ids += encoder.encode(text)
    return ids
