"""The service's limits on what a client may send and how long it may take: one constant each.

The transport (tls_worker.py, conn.py) and the HTTP layer (incoming.py) both
read them from here; docs/operations.md lists them.
"""

MAX_BODY = 64 * 1024  # bytes: the largest notification body taken (Quay's are a few kB)
REQUEST_TIMEOUT = 5.0  # seconds from accept() (or a kept-alive request's first byte) to a whole request
QUEUE_TIMEOUT = 10.0  # seconds a whole request may wait for a thread: Quay's own timeout, after which nobody waits
