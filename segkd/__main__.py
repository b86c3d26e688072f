"""`python -m segkd ...` is `segkd ...`."""

import sys

from segkd.cli import main

sys.exit(main())
