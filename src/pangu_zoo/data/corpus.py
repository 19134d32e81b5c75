"""Reading raw corpora: UTF-8 files with exact error positions, split into documents per dataset type."""

from __future__ import annotations

import glob
import json
import logging
import re
from pathlib import Path

from pangu_zoo.data.wikitext import wikitext_passages
from pangu_zoo.errors import DataError

logger = logging.getLogger(__name__)

_BLANK_LINES = re.compile(r"\n[ \t\u3000]*\n")


def find_input_files(input_glob: str) -> list[Path]:
    """Files matching `input_glob` (recursive `**` allowed), sorted by path so every run sees the same order."""
    files = sorted(Path(name) for name in glob.glob(input_glob, recursive=True) if Path(name).is_file())
    if not files:
        raise DataError(f"--input_glob {input_glob!r} matched no files; check the pattern "
                        f"(quote it so the shell does not expand it)")
    return files


def read_utf8(path: Path, errors: str = "strict") -> str:
    """Text of `path` with '\\r\\n' and '\\r' turned into '\\n' and a leading BOM removed.

    errors: "strict" raises `DataError` naming the byte offset of the first invalid byte; "replace" puts
    U+FFFD in place of invalid bytes and logs a warning.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        if errors != "replace":
            bad = data[error.start:error.end]
            raise DataError(f"{path}: invalid UTF-8 at byte offset {error.start} (bytes {bad!r}); "
                            f"convert the file to UTF-8 or pass --errors replace") from None
        text = data.decode("utf-8", errors="replace")
        logger.warning("%s: invalid UTF-8 from byte offset %d on, replaced by U+FFFD (%d replacements)",
                       path, error.start, text.count("\ufffd"))
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, with surrounding newlines and blank-only ones removed."""
    return [part.strip("\n") for part in _BLANK_LINES.split(text) if part.strip()]


def lambada_texts(text: str, path: Path | str = "<text>") -> list[str]:
    """The "text" field of each JSON line (LAMBADA jsonl)."""
    texts = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            texts.append(record["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"{path}:{line_number}: expected a JSON object with a \"text\" field "
                            f"(--dataset_type lambada): {error}") from None
    return [text for text in texts if text.strip()]


DATASET_TYPES = ("openwebtext", "wiki", "lambada")


def split_documents(text: str, dataset_type: str, path: Path | str = "<text>") -> list[str]:
    """Documents of one file's text: blank-line paragraphs (openwebtext), cleaned WikiText passages (wiki)
    or the "text" fields of JSON lines (lambada)."""
    if dataset_type == "wiki":
        return wikitext_passages(text)
    if dataset_type == "lambada":
        return lambada_texts(text, path)
    return paragraphs(text)
