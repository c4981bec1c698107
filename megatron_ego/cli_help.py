"""One look for every command-line tool's --help: the module docstring (its usage examples, kept
as written) above the options, each with its default.

    parser = make_parser(__doc__)
    parser.add_argument("--out", default="runs", help="output folder")   # "(default: runs)"
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Description verbatim; "(default: X)" after each option's help, except for required options,
    switches (store_true) and None defaults (the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.nargs == 0 or action.help is None:
            return action.help or ""
        return super()._get_help_string(action)


def make_parser(doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser whose description is ``doc`` as written and whose options show defaults."""
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter, **kwargs)
