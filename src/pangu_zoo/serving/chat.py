"""Chat messages -> one prompt string, through a pluggable template.

The base models (GPT-2, PanGu-alpha) were never trained on a chat format, so the default template writes the
conversation as a plain transcript the model can continue:

    GPT-2                       PanGu-alpha
    <system text>               <system text>
    User: Hello                 用户：你好
    Assistant: Hi there         助手：你好！
    User: How are you?          用户：你好吗？
    Assistant:                  助手：

System (and developer) messages are plain lines at their place; every other turn is "<label><separator><text>";
the prompt ends with the assistant's label, with no trailing space (GPT-2's tokens carry their leading space).
The labels follow the tokenizer's kind. The template also names stop strings (the start of the next user turn),
so a base model that goes on to write the user's next line is cut there.

A model with its own chat format registers a `ChatTemplate` under a name (`register_template`) and the server
is started with that name. openPangu-Embedded's tokenizer selects its own template, `openpangu`
(`[unused9]用户：...[unused10]` turns, formats.md §6.3), after the BOS piece; its turn end is the end id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pangu_zoo.data.sft.chat_template import render_chat
from pangu_zoo.errors import InputError

ROLES = ("system", "developer", "user", "assistant")
PLAIN_ROLES = ("system", "developer")  # written as bare lines, without a label


@dataclass(frozen=True)
class Labels:
    user: str
    assistant: str
    separator: str


LABELS = {
    "gpt2": Labels("User", "Assistant", ": "),
    "pangu-alpha": Labels("用户", "助手", "："),
}


@dataclass(frozen=True)
class ChatTemplate:
    """`render(messages, tokenizer)` gives the prompt; `stops(tokenizer)` the strings that end the reply."""

    name: str
    render: Callable[[list[dict], object], str]
    stops: Callable[[object], tuple[str, ...]] = lambda tokenizer: ()


def labels_for(tokenizer) -> Labels:
    return LABELS.get(getattr(tokenizer, "kind", ""), LABELS["gpt2"])


def render_transcript(messages: list[dict], tokenizer) -> str:
    labels = labels_for(tokenizer)
    lines = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role in PLAIN_ROLES:
            lines.append(content)
        else:
            label = labels.user if role == "user" else labels.assistant
            lines.append(f"{label}{labels.separator}{content}")
    lines.append(f"{labels.assistant}{labels.separator}".rstrip(" "))
    return "\n".join(lines)


def transcript_stops(tokenizer) -> tuple[str, ...]:
    labels = labels_for(tokenizer)
    return (f"\n{labels.user}{labels.separator}".rstrip(" "),)


def render_openpangu(messages: list[dict], tokenizer) -> str:
    """openPangu's template with the generation prompt, after the tokenizer's BOS piece (as the released tokenizer
    adds BOS to the rendered text); developer messages are system turns."""
    turns = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    return (getattr(tokenizer, "bos_token", None) or "") + render_chat(turns, add_generation_prompt=True)


TEMPLATES: dict[str, ChatTemplate] = {"transcript": ChatTemplate("transcript", render_transcript, transcript_stops),
                                      "openpangu": ChatTemplate("openpangu", render_openpangu)}
DEFAULT_TEMPLATE = "transcript"
KIND_TEMPLATES = {"openpangu": "openpangu"}  # tokenizer kind -> the template its models were trained with


def register_template(template: ChatTemplate) -> None:
    TEMPLATES[template.name] = template


def get_template(template: str | ChatTemplate | None = None, tokenizer=None) -> ChatTemplate:
    """The template named (or given); by default the one of the tokenizer's kind, else the transcript."""
    if isinstance(template, ChatTemplate):
        return template
    name = template or KIND_TEMPLATES.get(getattr(tokenizer, "kind", ""), DEFAULT_TEMPLATE)
    if name not in TEMPLATES:
        raise InputError(f"unknown chat template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def check_messages(messages: list[dict]) -> None:
    """Raise `InputError` unless `messages` is a non-empty list of {role, content: str} with known roles."""
    if not messages:
        raise InputError("messages must hold at least one message")
    for number, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise InputError(f"messages[{number}].role must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise InputError(f"messages[{number}].content must be a string")


def chat_prompt(messages: list[dict], tokenizer, template: str | ChatTemplate | None = None) -> str:
    """The prompt text for `messages` ([{role, content}]) under `template` (default: the tokenizer kind's, else
    the transcript)."""
    check_messages(messages)
    return get_template(template, tokenizer).render(messages, tokenizer)
