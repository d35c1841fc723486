"""What every layer uses and that uses nothing of the service: the metrics' counters, the limits, printable text."""
