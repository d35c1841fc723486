"""What the tests and the benchmarks share: a test PKI, a loopback GitHub, real gunicorn servers
running the service, a private PostgreSQL, the command line, and waiting for any of them.

Nothing here is part of the service: the image leaves it out (.dockerignore), and neither
quay_dispatch/ nor bench/ imports tests/.
"""
