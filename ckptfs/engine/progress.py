"""A broadcast that something moved: a chunk or version uploaded, a segment published, a spilled
window punched. Writers waiting for room and `ckptfs sync` waiting for the lake look again."""

from __future__ import annotations

import trio


class Progress:
    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()
