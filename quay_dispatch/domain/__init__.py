"""Quay's events, the routes, the dispatch requests they give and their statuses, and what follows each attempt:
pure functions on plain data."""
