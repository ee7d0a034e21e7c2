"""``python -m dendrite`` runs the command line."""

from dendrite.cli import app

app()
