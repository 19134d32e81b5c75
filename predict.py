"""Reference-compatible entry point `python predict.py ...` (the reference zoo's argument names).

The logic lives in `pangu_zoo.inference.predict`; `python predict.py --help` lists the arguments.
"""

import sys

from pangu_zoo.inference.predict import main

if __name__ == "__main__":
    sys.exit(main())
