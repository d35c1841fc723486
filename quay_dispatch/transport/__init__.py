"""The connection: the event loop's framing, its streams (plain and TLS), the TLS contexts, and the peer's identity."""
