"""Reference-compatible entry point `python export.py ...` (the reference zoo's argument names)."""

import sys

from pangu_zoo.entry import not_yet

if __name__ == "__main__":
    sys.exit(not_yet("export"))
