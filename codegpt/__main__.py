"""``python -m codegpt``: the same as the ``codegpt`` command."""

import sys

from codegpt.cli import main

sys.exit(main())
