"""`ld-augment bank ...`: the `synthesis-bank` commands mounted under ld-augment.

The CLI is the top of the stack, so it may reach up into `synthesis_bank` (which builds on ld_augment);
no library module of ld_augment does.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from synthesis_bank.cli import add_bank_parsers

    p = subparsers.add_parser("bank", help="build, merge and prepare synthetic lesion banks (= synthesis-bank)")
    add_bank_parsers(p.add_subparsers(dest="bank_command", metavar="<command>", required=True))
