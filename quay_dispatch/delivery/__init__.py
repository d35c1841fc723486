"""Sending to GitHub: the deliverer thread, the GitHub client, a GitHub App's tokens."""
