"""`python -m bcoder.data fetch NAME [NAME ...] --out DIR`: downloads MBPP, HumanEval or APPS from the
Hugging Face hub in the formats bcoder's loaders read (see bcoder.data.fetch). Light: --help imports
neither torch nor the hub."""
import argparse
import sys
from pathlib import Path

from bcoder.data.fetch import DATASETS, FetchError, fetch
from bcoder.data.problems import DataError


def main(argv=None):
    """Runs the command line `argv` (default sys.argv[1:]); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bcoder.data",
                                     description="bcoder's data sets: fetch downloads them from the Hugging Face hub.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser(
        "fetch", help="download data sets from the Hugging Face hub",
        description="Download the full public data sets from the Hugging Face hub and write them in the formats "
                    "bcoder's loaders read: mbpp -> mbpp.jsonl and sanitized-mbpp.json, humaneval -> "
                    "HumanEval.jsonl.gz, apps -> apps_train.jsonl and apps_test.jsonl; their sha256 go to "
                    "DIR/SHA256SUMS. Downloads are cached (HF_HOME) and resumed.")
    fetch_parser.add_argument("names", nargs="+", choices=DATASETS, help="the data sets to fetch")
    fetch_parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the files to")
    fetch_parser.add_argument("--revision", help="branch, tag or commit of the hub repositories (default: main)")
    args = parser.parse_args(argv)
    try:
        for name in dict.fromkeys(args.names):         # each once, in the order given
            fetch(name, args.out, args.revision)
    except (FetchError, DataError, OSError) as error:
        print(f"python -m bcoder.data fetch: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
