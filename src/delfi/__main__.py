"""`python -m delfi`: the command line."""

from delfi.cli.app import main

main()
