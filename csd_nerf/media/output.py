"""Output folders written all at once, that never replace what the user made.

Results go to a staging folder beside the output and are renamed into place at the end, so a failed or
interrupted run leaves nothing half-written (an interrupted run keeps only what it had finished saving, whole). ``--overwrite`` replaces only a folder this project wrote (it holds the marker
file, e.g. ``run.json``) or an empty one; any other folder is refused and left untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from csd_nerf.errors import UserError, first_line

__all__ = ["OutputError", "StagedOutput", "umask_mode", "check_replaceable"]


class OutputError(UserError):
    """The output folder cannot be used; the message is one line."""


def umask_mode(base: int = 0o777) -> int:
    """``base`` with the process's umask applied: what ``mkdir`` would give (``mkdtemp`` always gives 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def check_replaceable(folder: Path, marker: str) -> None:
    """Raise unless ``folder`` is empty or holds ``marker`` (a file this project writes in every output)."""
    try:
        empty = not any(folder.iterdir())
    except OSError as exc:
        raise OutputError(f"cannot read the output folder {folder} ({first_line(exc)})") from None
    if not empty and not (folder / marker).is_file():
        raise OutputError(
            f"output folder {folder} holds files this tool did not write (no {marker}): "
            f"--overwrite only replaces an earlier result; choose another output folder"
        )


class StagedOutput:
    """Refuses an existing output unless ``overwrite`` (and ours), never touches the inputs, commits by renaming.

    Args:
        final: the output folder the user asked for.
        overwrite: replace an existing output folder (only when the run succeeds, and only one we wrote).
        inputs: paths that are only read; an output that is, or contains, one of them is refused.
        marker: the file every output of this tool holds; it is what makes a folder replaceable.
    """

    def __init__(
        self,
        final: str | Path,
        overwrite: bool = False,
        inputs: tuple[str | Path, ...] = (),
        marker: str = "run.json",
    ) -> None:
        self.final = Path(final).expanduser().absolute()
        self.overwrite = overwrite
        self.inputs = tuple(Path(p).expanduser().absolute() for p in inputs)
        self.marker = marker
        self.staging: Path | None = None

    def check(self) -> None:
        """Fail early, before any work, if the output cannot be used."""
        for source in self.inputs:
            if source == self.final or self.final in source.parents:
                raise OutputError(f"output {self.final} would replace the input {source}: choose another output folder")
        if self.final.exists() or self.final.is_symlink():
            if not self.final.is_dir() or self.final.is_symlink():
                raise OutputError(f"output {self.final} exists and is not a folder: choose another output folder")
            if not self.overwrite:
                raise OutputError(
                    f"output folder {self.final} exists: pass --overwrite to replace it, or choose another"
                )
            check_replaceable(self.final, self.marker)

    def open(self) -> Path:
        """Create the staging folder next to the output (with the user's umask) and return it."""
        self.check()
        parent = self.final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f"{self.final.name}.partial-", dir=parent))
            self.staging.chmod(umask_mode())
        except OSError as exc:
            raise OutputError(
                f"cannot write the output folder in {parent} ({exc.strerror or type(exc).__name__}): "
                f"choose a writable location"
            ) from None
        return self.staging

    def commit(self) -> Path:
        """Move the staged results into place (replacing an old output only now) and return the output folder."""
        if self.staging is None:
            raise RuntimeError("commit() before open()")
        if not (self.staging / self.marker).is_file():
            raise RuntimeError(f"the staged output lacks its {self.marker}: it could never be replaced again")
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

    def keep(self) -> Path:
        """Keep the staged results of an interrupted run (they hold their ``marker``); returns where they are.

        They become the output folder when there is none yet. An earlier output (``--overwrite``) is replaced only
        by a finished run: then they go beside it, as ``<name>.interrupted-<random suffix>``.
        """
        if self.staging is None:
            raise RuntimeError("keep() before open()")
        if self.final.exists() or self.final.is_symlink():
            kept = self.staging.with_name(self.staging.name.replace(".partial-", ".interrupted-", 1))
        else:
            kept = self.final
        os.replace(self.staging, kept)
        self.staging = None
        return kept

    def public(self, text: str) -> str:
        """``text`` naming the output folder where it names the staging folder (which the user never sees)."""
        return text if self.staging is None else text.replace(str(self.staging), str(self.final))

    def discard(self) -> None:
        """Remove the staging folder (after an error or an interruption)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
