"""`python -m promptgrid.cli`: the same command as `promptgrid`."""

from promptgrid.cli import main

main()
