"""`python -m analyses` runs the `pythia-interp` command line."""

import sys

from analyses.cli import main

sys.exit(main())
