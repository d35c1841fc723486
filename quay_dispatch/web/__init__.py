"""The service's HTTP: /incoming, and the endpoints platforms and Prometheus probe."""
