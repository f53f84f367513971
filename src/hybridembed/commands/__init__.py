"""Sub-commands of the `hybridembed` CLI; each module registers one parser (and its children)."""

import argparse


def add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    """The flag every command that loads a model offers (the recipe's key is model.trust_remote_code)."""
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run modelling code shipped with the model (Jina-BERT, nomic-bert, gte-v1.5); only for models you trust",
    )
