"""Quay's side (QUAY_API_TOKEN): set up, watch and repair Quay's notifications, and recover what Quay dropped.
Imported only when the token is set. api.py is Quay's API, as far as the relay may use it."""
