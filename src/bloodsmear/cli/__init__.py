"""Command-line interface: each module parses arguments and calls library functions, nothing more."""
