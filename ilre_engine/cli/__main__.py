"""``python -m ilre_engine.cli``: the ``ilre`` command."""

import sys

from . import main

sys.exit(main())
