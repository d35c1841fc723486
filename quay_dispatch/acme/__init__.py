"""Certificates from ACME (RFC 8555), answered by tls-alpn-01 (RFC 8737) on the service's own TLS port.

Off unless ACME_DOMAINS is set, and then imported by the worker only: a service without ACME
loads none of it, nor certbot's `acme` library.

- hello.py: the server name and ALPN protocols of a ClientHello, read from its raw bytes.
- challenge.py: the tls-alpn-01 challenge certificate and the context that shows it.
- router.py: which context a new connection gets, chosen from its ClientHello.
- protocol.py: RFC 8555 by certbot's library: the account, an order, ARI's renewal window.
- schedule.py: when to order: at once, in the renewal window, after a backoff.
- state.py: what is kept in the store every worker and replica shares.
- manager.py: each worker's thread: the certificate swapped in, the order placed by the lease's holder.
"""
