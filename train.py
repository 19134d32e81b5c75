"""Reference-compatible training entry point: `python train.py --data_url DIR --per_batch_size N ...`."""

import sys

from pangu_zoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
