"""The `meg` command line: one command per module, each a thin shell over one library function."""
