"""What a DCP checkpoint's `.metadata` names, read without torch (ckptfs/dcp_metadata.py): the same files
torch's own reading names, no code the pickle names is run, and `ckptfs latest` needs no torch."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp

from ckptfs import dcp_metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_reads(directory: str) -> list[str]:
    metadata = dcp.FileSystemReader(directory).read_metadata()
    return sorted({info.relative_path for info in metadata.storage_data.values()})


def blob(directory: str) -> bytes:
    with open(os.path.join(directory, ".metadata"), "rb") as file:
        return file.read()


@pytest.mark.parametrize("per_rank", [True, False])
def test_the_files_named_are_those_torch_reads(tmp_path, per_rank):
    state = {"model": {"w": torch.randn(64, 8), "b": torch.zeros(8, dtype=torch.bfloat16)},
             "optim": {"step": torch.tensor(7), "lr": 0.1, "betas": (0.9, 0.99)},
             "extra": {"name": "run-1", "blob": b"\x00" * 100, "nested": [1, 2, {"k": "v"}]}}
    directory = str(tmp_path / "step-1")
    dcp.save(state, storage_writer=dcp.FileSystemWriter(directory, single_file_per_rank=per_rank), no_dist=True)
    named = dcp_metadata.named_files(blob(directory))
    assert named == torch_reads(directory)
    assert (len(named) == 1) == per_rank  # one file per rank, or one per item


class Runs:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_reading_runs_nothing_the_pickle_names(tmp_path):
    marker = str(tmp_path / "ran")
    with pytest.raises(dcp_metadata.MetadataError):
        dcp_metadata.named_files(pickle.dumps({"storage_data": Runs(marker)}))
    with pytest.raises(dcp_metadata.MetadataError):
        dcp_metadata.named_files(pickle.dumps(Runs(marker)))  # not torch's Metadata
    with pytest.raises(dcp_metadata.MetadataError):
        dcp_metadata.named_files(b"not a pickle")
    assert not os.path.exists(marker)


def test_latest_as_a_command_reads_dcp_metadata_without_torch(tmp_path):
    """A restart script's `ckptfs latest` reads what each DCP checkpoint needs with torch unimportable
    (it imported torch for that: seconds per call), and still passes over one missing a shard."""
    for step in (10, 20):
        directory = str(tmp_path / "run" / f"step-{step}")
        dcp.save({"a": torch.ones(4), "b": torch.zeros(4)},
                 storage_writer=dcp.FileSystemWriter(directory, single_file_per_rank=False), no_dist=True)
    shards = sorted(name for name in os.listdir(tmp_path / "run" / "step-20") if name.endswith(".distcp"))
    os.unlink(tmp_path / "run" / "step-20" / shards[-1])
    program = ("import sys; sys.modules['torch'] = None\n"  # `import torch` raises ImportError
               "import ckptfs.latest, ckptfs.cli\n"
               "ckptfs.latest.committed = lambda path: True  # no mount here: every file counts as committed\n"
               "code = ckptfs.cli.main(['latest', '--no-refresh', '--json', sys.argv[1]])\n"
               "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
               "raise SystemExit(code)\n")
    result = subprocess.run([sys.executable, "-c", program, str(tmp_path / "run")], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["latest"]["path"] == str(tmp_path / "run" / "step-10")
    assert report["passed_over"][0]["missing"] == [shards[-1]]
