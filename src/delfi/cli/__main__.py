"""`python -m delfi.cli`: the command line."""

from delfi.cli.app import main

main()
