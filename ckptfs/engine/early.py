"""What has been uploaded of a version before it was sealed (engine/prefix.py), and what spilling
records of it (engine/spill.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass
class Early:
    frontier: int = 0  # end of the bytes written contiguously from offset 0
    done: int = 0  # [0, done) is cut and its chunks are in the lake
    read_end: int = 0  # a change below this invalidates the work
    entries: list[tuple[bytes, int]] = field(default_factory=list)
    new_bytes: int = 0
    stored_bytes: int = 0
    broken: bool = False
    sealed: bool = False  # the version worker has it: finish the window in hand, then stop
    spill: bool = False  # the cache is full: upload as it is written, and punch what is uploaded
    persisted: int = 0  # entries recorded in the journal (spilled versions only)
    running: trio.Event | None = None  # set when the round in flight ends
