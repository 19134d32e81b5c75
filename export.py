"""Reference-compatible entry point `python export.py ...` (predict.py's argument names, as the reference's
`predict.py --export 1`); the logic lives in `pangu_zoo.serving.export_cli`."""

import sys

from pangu_zoo.serving.export_cli import main

if __name__ == "__main__":
    sys.exit(main())
