"""`python -m agestimate` runs the `agestimate` command."""

from agestimate.cli.main import cli

cli()
