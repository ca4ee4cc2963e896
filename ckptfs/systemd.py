"""systemd's readiness protocol (sd_notify): with `Type=notify`, systemd starts the units that need
/ckpt only once the daemon says READY=1, which it says once the mount answers. Without
NOTIFY_SOCKET in the environment (not started by systemd), nothing is sent."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1", "STOPPING=1", "STATUS=...") to systemd, if it listens."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.connect(address)
        sender.sendall(message.encode())
    return True
