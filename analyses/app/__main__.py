"""`python -m analyses.app [--model toy] [--port 8050] [PATHS...]`: serve the explorer."""

import sys

from analyses.app.command import main

sys.exit(main())
