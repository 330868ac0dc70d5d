"""An output folder written all at once: results go to a staging folder beside it, renamed into place at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class OutputError(ValueError):
    """The output folder cannot be used; the message is one line."""


class StagedOutput:
    """Refuses an existing output unless ``overwrite``, never touches the inputs, and commits by renaming.

    Args:
        final: the output folder the user asked for.
        overwrite: replace an existing output folder (only when the run succeeds).
        inputs: paths that are only read; an output that is, or contains, one of them is refused.
    """

    def __init__(self, final: str | Path, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()) -> None:
        self.final = Path(final).expanduser().absolute()
        self.overwrite = overwrite
        self.inputs = tuple(Path(p).expanduser().absolute() for p in inputs)
        self.staging: Path | None = None

    def check(self) -> None:
        """Fail early, before any work, if the output cannot be used."""
        for source in self.inputs:
            if source == self.final or self.final in source.parents:
                raise OutputError(f"output {self.final} would replace the input {source}: choose another output folder")
        if self.final.exists() or self.final.is_symlink():
            if not self.final.is_dir():
                raise OutputError(f"output {self.final} exists and is not a folder: choose another output folder")
            if not self.overwrite:
                raise OutputError(
                    f"output folder {self.final} exists: pass --overwrite to replace it, or choose another"
                )

    def open(self) -> Path:
        """Create the staging folder next to the output and return it."""
        self.check()
        parent = self.final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f"{self.final.name}.partial-", dir=parent))
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise OutputError(
                f"cannot write the output folder in {parent} ({reason}): choose a writable location"
            ) from None
        return self.staging

    def commit(self) -> Path:
        """Move the staged results into place (replacing an old output only now) and return the output folder."""
        if self.staging is None:
            raise RuntimeError("commit() before open()")
        self.check()
        old = None
        if self.final.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{self.final.name}.old-", dir=self.final.parent))
            os.replace(self.final, old / "previous")
        os.replace(self.staging, self.final)
        self.staging = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def discard(self) -> None:
        """Remove the staging folder (after an error or an interruption)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
