"""`ckptfs latest PATH`: the newest checkpoint under PATH whose every file is committed in the lake.

What a restart script calls after `ckptfs refresh`: it must never name a checkpoint a crashed node
left half-uploaded. A checkpoint is complete when every file it needs exists here (other mounts'
files exist once they are published) and is `committed` (`user.ckptfs.state`). The layouts known:

* PyTorch Distributed Checkpoint: a directory with `.metadata` or `.distcp` files; it needs `.metadata`
  (written last, once every rank's files are) and every file the metadata names (read without
  importing torch: dcp_metadata.py).
* Hugging Face: `checkpoint-N` with `trainer_state.json` (the Trainer writes it last).
* Lightning and plain `torch.save`: a file (`.ckpt`, `.pt`, `.pth`, `.bin`, `.safetensors`).
* Anything else: a directory with files of its own, all committed. A directory whose files all lie in
  subdirectories (a run directory) is not a checkpoint: its checkpoints are looked for inside it.

Checkpoints are ordered by the step in their name (`step-100`, `checkpoint-100`, `epoch=3-step=100`,
`global_step100`), then by modification time.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field

STATE_XATTR = "user.ckptfs.state"
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
_STEP = re.compile(r"(?:step|checkpoint|global_step|iter)[=_-]?(\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"(\d+)")


@dataclass
class Checkpoint:
    path: str
    layout: str  # "dcp", "huggingface", "file", "directory"
    step: int | None
    mtime_ns: int
    files: list[str] = field(default_factory=list)  # relative to path (empty for a file)
    missing: list[str] = field(default_factory=list)  # needed, not here
    uncommitted: list[str] = field(default_factory=list)  # here, not committed in the lake

    @property
    def complete(self) -> bool:
        return not self.missing and not self.uncommitted

    def as_dict(self) -> dict:
        return {"path": self.path, "layout": self.layout, "step": self.step, "complete": self.complete,
                "files": len(self.files) or 1, "missing": self.missing[:20], "uncommitted": self.uncommitted[:20]}


def step_of(name: str) -> int | None:
    match = _STEP.search(name) or _NUMBER.search(name)
    return int(match.group(1)) if match else None


def committed(path: str) -> bool:
    try:
        return os.getxattr(path, STATE_XATTR).startswith(b"committed")
    except OSError:
        return False


def _files_under(directory: str) -> list[str]:
    found = []
    for root, _, names in os.walk(directory):
        found += [os.path.relpath(os.path.join(root, name), directory) for name in names]
    return sorted(found)


def read_inspecting(path: str) -> bytes:
    """A file's bytes, read as an inspection: opened with O_NOATIME, which a mount takes as a look,
    not a use, and does not hold (engine/holds.py: a read holds the version for 7 days, and `latest`
    reads every DCP checkpoint's `.metadata` it considers). The kernel allows O_NOATIME only to the
    file's owner (or CAP_FOWNER); anyone else reads it plainly."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOATIME)
    except PermissionError:
        descriptor = os.open(path, os.O_RDONLY)
    with os.fdopen(descriptor, "rb") as file:
        return file.read()


def dcp_files(directory: str) -> list[str] | None:
    """The files a DCP checkpoint's `.metadata` names (relative), read as an inspection
    (read_inspecting) and decoded without torch (dcp_metadata.py: importing torch was most of what
    `ckptfs latest` cost as a command); a pickle that decoding does not know is decoded with torch,
    from a copy. None if neither can: then every file present is what the checkpoint needs."""
    from ckptfs import dcp_metadata

    blob = read_inspecting(os.path.join(directory, ".metadata"))
    try:
        return dcp_metadata.named_files(blob)
    except dcp_metadata.MetadataError:
        pass
    try:
        from torch.distributed.checkpoint import FileSystemReader
    except ImportError:
        return None
    with tempfile.TemporaryDirectory(prefix="ckptfs-latest-") as copy:
        with open(os.path.join(copy, ".metadata"), "wb") as file:
            file.write(blob)
        metadata = FileSystemReader(copy).read_metadata()
    return sorted({info.relative_path for info in (metadata.storage_data or {}).values()})


def examine(path: str) -> Checkpoint | None:
    """The checkpoint at `path`, with what it lacks; None if `path` is not one."""
    name = os.path.basename(path)
    info = os.stat(path)
    if os.path.isfile(path):
        if not name.endswith(CHECKPOINT_SUFFIXES):
            return None
        return Checkpoint(path, "file", step_of(name), info.st_mtime_ns,
                          uncommitted=[] if committed(path) else [name])
    if not os.path.isdir(path):
        return None
    present = _files_under(path)
    if not present:
        return None
    if ".metadata" in present:
        needed, layout = [".metadata"], "dcp"  # and what it names: `latest` reads it (with_dcp_files)
    elif any(file.endswith(".distcp") for file in present):
        needed, layout = [".metadata"], "dcp"  # DCP writes .metadata last: a save that failed midway
    elif "trainer_state.json" in present or name.startswith("checkpoint-"):
        needed = ["trainer_state.json"]
        layout = "huggingface"
    elif all("/" in file for file in present):
        return None  # only subdirectories hold files: a run directory, whose checkpoints are inside it
    else:
        needed, layout = [], "directory"
    files = sorted(set(present) | set(needed))
    missing = [file for file in needed if file not in present]
    uncommitted = [file for file in present if not committed(os.path.join(path, file))]
    return Checkpoint(path, layout, step_of(name), info.st_mtime_ns, files, missing, uncommitted)


def checkpoints(top: str, depth: int = 3) -> list[Checkpoint]:
    """Every checkpoint under `top` (in run directories too, down to `depth`), newest first."""
    found = []
    for entry in sorted(os.listdir(top)):
        path = os.path.join(top, entry)
        checkpoint = examine(path)
        if checkpoint is not None:
            found.append(checkpoint)
        elif depth > 1 and os.path.isdir(path) and not os.path.islink(path):
            found += checkpoints(path, depth - 1)
    found.sort(key=lambda c: (c.step if c.step is not None else -1, c.mtime_ns), reverse=True)
    return found


def with_dcp_files(checkpoint: Checkpoint) -> Checkpoint:
    """A DCP checkpoint with `.metadata` needs every file the metadata names too. Reading it is a
    lake GET on a mount that has not read it yet, so `latest` reads only the ones it considers,
    newest first: a restart on a new mount waited for every checkpoint's metadata."""
    if checkpoint.layout == "dcp" and ".metadata" in checkpoint.files and ".metadata" not in checkpoint.missing:
        named = dcp_files(checkpoint.path) or []
        checkpoint.missing += [file for file in named if file not in checkpoint.files]
        checkpoint.files = sorted(set(checkpoint.files) | set(named))
    return checkpoint


def latest(top: str) -> tuple[Checkpoint | None, list[Checkpoint]]:
    """The newest complete checkpoint under `top`, and the newer incomplete ones it passed over."""
    passed = []
    for checkpoint in checkpoints(top):
        if checkpoint.complete and with_dcp_files(checkpoint).complete:
            return checkpoint, passed
        passed.append(checkpoint)
    return None, passed
