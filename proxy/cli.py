"""The `vllm-switch` command line."""

from __future__ import annotations

import argparse
import sys

from proxy import __version__


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="vllm-switch",
        description="Serve several vLLM models on one GPU behind one OpenAI endpoint.",
    )
    parser.add_argument("--version", action="version", version=f"vllm-switch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "emulate",
        add_help=False,
        help="run a vLLM 0.26.0 emulator (takes `vllm serve` flags; see `emulate --help`)",
    )
    if args and args[0] == "emulate":
        from proxy.emulator.server import main as emulate

        return emulate(args[1:])
    ns = parser.parse_args(args)
    if ns.command is None:
        parser.print_help()
        return 2
    return 0
