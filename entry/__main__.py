"""``python -m matforge ...``: the same as the ``matforge`` command."""

import sys

from matforge.cli.main import main

sys.exit(main())
