"""``python -m impexec …``: the command line (launchers start workers this way)."""

import sys

from ._cli import main

sys.exit(main())
