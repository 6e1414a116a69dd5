"""``python -m vidprop`` runs the CLI."""

import sys

from vidprop.cli import main

if __name__ == "__main__":
    sys.exit(main())
