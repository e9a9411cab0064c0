"""``python -m ftdyn`` runs the command line."""

from .cli import app

app(prog_name="ftdyn")
