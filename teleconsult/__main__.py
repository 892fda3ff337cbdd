"""`python -m teleconsult`: the same command line as `teleconsult`."""

import sys

from teleconsult.cli import main

sys.exit(main())
