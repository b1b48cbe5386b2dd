"""The command line: parse, validate, call one library function, print.

:mod:`~slimfuse.cli.main` builds the parser and runs a command; :mod:`~slimfuse.cli.common`
holds what every command shares; one module per technique family adds its commands.
"""

from slimfuse.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
