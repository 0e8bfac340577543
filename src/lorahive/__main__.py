"""``python -m lorahive``: the command line (what ``torchrun -m lorahive run …`` starts on each rank)."""

from lorahive.cli.main import app

app(prog_name="lorahive")
