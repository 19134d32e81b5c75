"""Copying a tokenizer (a folder or one vocabulary file) next to converted weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pangu_zoo.errors import ConfigError


def tokenizer_sources(tokenizer_path: str | os.PathLike) -> list[Path]:
    """The files to copy: `tokenizer_path` itself, or the files of that folder."""
    path = Path(tokenizer_path)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    if not files:
        raise ConfigError(f"tokenizer path {path} is neither a file nor a folder holding files")
    return files


def copy_tokenizer(tokenizer_path: str | os.PathLike, directory: Path,
                   renames: dict[str, str] | None = None) -> list[str]:
    """Copy the tokenizer's files into `directory`, renaming those `renames` names unless the new name is taken."""
    sources = tokenizer_sources(tokenizer_path)
    names = {source.name for source in sources}
    written = []
    for source in sources:
        target = (renames or {}).get(source.name, source.name)
        target = source.name if target != source.name and target in names else target
        shutil.copyfile(source, directory / target)
        written.append(target)
    return written
