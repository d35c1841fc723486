"""quay-github-actions-dispatch: Quay notifications in, proven genuine, GitHub Actions workflows out."""

__version__ = "1.0.0"
