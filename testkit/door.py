"""A TLS listener on loopback whose connections go through a context chooser (quay_dispatch.acme's ChallengeRouter),
without gunicorn: each connection is handshaken by TLSStream, and its outcome recorded."""

from __future__ import annotations

import select
import socket
import threading

from quay_dispatch.transport.tls_context import ChallengeAnswered
from quay_dispatch.transport.tls_stream import TLSStream


def constant(value):
    """A callable that always gives `value` (a door's serving context)."""
    return lambda: value


class DoorServer:
    """Serves connections through `choose`, one at a time, in a thread: "served" (it sent b"served"),
    "challenge answered for NAME", or "refused: WHY"."""

    def __init__(self, choose):
        self.router = choose
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.outcomes: list[str] = []

    def serve(self, count: int) -> threading.Thread:
        """Serve the next `count` connections (pebble's validator comes several times per challenge)."""
        thread = threading.Thread(target=lambda: [self._serve() for _ in range(count)], daemon=True)
        thread.start()
        return thread

    def _serve(self) -> None:
        try:
            raw, _ = self.listener.accept()
        except OSError:  # closed
            return
        raw.setblocking(False)
        stream = TLSStream(raw, self.router, io_timeout=5.0)
        try:
            while not stream.handshake_nowait():
                select.select([raw], [], [], 5.0)
            stream.sendall(b"served")
            self.outcomes.append("served")
        except ChallengeAnswered as answered:
            self.outcomes.append(f"challenge answered for {answered}")
        except Exception as exc:  # what the worker logs and drops
            self.outcomes.append(f"refused: {exc}")
        finally:
            stream.close()

    def close(self) -> None:
        self.listener.close()
