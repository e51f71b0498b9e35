"""The `musetok` command: argument parsing only; each subcommand calls one library function."""

from musetok.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
