"""Writing output files under temporary names and moving them into place only when everything succeeded."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pangu_zoo.errors import DataError


class StagingDir:
    """A hidden temporary directory next to the outputs; `publish()` moves its files to their final names.

    Files keep their final base names while staged: MindRecord's `.db` index records the data file's name,
    so a data file cannot be renamed after it is written, only moved to another directory.
    """

    def __init__(self, output_dir: Path):
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=".pangu-staging-", dir=output_dir))
        except OSError as error:
            raise DataError(f"cannot write to output directory {output_dir}: {error}; "
                            f"choose a writable --output_file location") from error
        self.output_dir = output_dir

    def file(self, name: str) -> Path:
        """Staged path of the output file `name`."""
        return self.path / name

    def publish(self) -> list[Path]:
        """Move every staged file into the output directory (same file system: each move is atomic)."""
        published = []
        for staged in sorted(self.path.iterdir()):
            target = self.output_dir / staged.name
            os.replace(staged, target)
            published.append(target)
        self.discard()
        return published

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
