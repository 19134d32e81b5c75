"""Reference-compatible entry point `python predict.py ...` (the reference zoo's argument names)."""

import sys

from pangu.entry import not_yet

if __name__ == "__main__":
    sys.exit(not_yet("predict"))
