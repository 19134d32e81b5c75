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


def copy_tokenizer(tokenizer_path: str | os.PathLike, directory: Path) -> list[str]:
    sources = tokenizer_sources(tokenizer_path)
    for source in sources:
        shutil.copyfile(source, directory / source.name)
    return [source.name for source in sources]
