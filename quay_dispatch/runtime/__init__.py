"""What a process runs with: the services built from the settings, the checks before serving, the logs."""
