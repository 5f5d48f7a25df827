"""What the command lines share: one-line errors (exit status 2, no traceback) for bad input, and the
exceptions that count as bad input rather than bugs."""
import argparse
import sqlite3
import sys

from bcoder.config import TrainingError
from bcoder.data.problems import DataError
from bcoder.files import LockedError
from bcoder.replay import ReplayError

EXPECTED_ERRORS = (TrainingError, DataError, ReplayError, LockedError, ValueError, OSError, sqlite3.Error)


def exit_with(program, error):
    print(f"{program}: {error}", file=sys.stderr)
    sys.exit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line (not the usage block), exit status 2."""

    def error(self, message):
        exit_with(self.prog, f"{message} (--help lists the flags)")
