"""The `hybridembed` command line: one sub-command per module under hybridembed.commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

from hybridembed import __version__
from hybridembed.errors import HybridembedError

# Each module defines `register(subparsers)`, which adds its parser and sets `func`.
COMMAND_MODULES = ("train", "data", "encode", "demo", "eval", "mine", "serve", "push", "tokenizer", "export")


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser that may also hand its arguments to a parser of its own when they
    start with a given word (`hybridembed eval compare A B` next to `hybridembed eval MODEL ...`):
    argparse cannot give one parser both a positional and sub-commands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.word_commands: dict[str, argparse.ArgumentParser] = {}

    def add_word_command(self, word: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A parser for `<this command> WORD ...`, with its own usage and --help."""
        child = argparse.ArgumentParser(prog=f"{self.prog} {word}", **kwargs)
        self.word_commands[word] = child
        return child

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if args and args[0] in self.word_commands:  # parse_args: the child itself refuses extra arguments, with its usage
            return self.word_commands[args[0]].parse_args(args[1:], namespace), []
        return super().parse_known_args(args, namespace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridembed", description="Train, evaluate and serve text-embedding models with task-routed hybrid losses.")
    parser.add_argument("--version", action="version", version=f"hybridembed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"hybridembed.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"hybridembed.commands.{name}":
                continue  # a command not built yet in this checkout
            raise
        module.register(subparsers)
    _mark_required(parser)
    return parser


def _mark_required(parser: argparse.ArgumentParser) -> None:
    """Say "(required)" in the help of every required option, in every sub-command (argparse only leaves off the brackets)."""
    for action in parser._actions:  # argparse has no public way to walk a parser's arguments
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _mark_required(child)
                for word_command in getattr(child, "word_commands", {}).values():
                    _mark_required(word_command)
        elif action.required and action.option_strings and action.help and not action.help.startswith("(required)"):
            action.help = f"(required) {action.help}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        code = int(args.func(args) or 0)
    except HybridembedError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if code == 0 and "torch.distributed" in sys.modules:  # a multi-process run (torchrun): every rank finished
        from hybridembed.distributed import finish_distributed_run

        finish_distributed_run(code)  # does not return in a multi-process run
    return code


if __name__ == "__main__":
    sys.exit(main())
