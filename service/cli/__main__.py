"""``python -m service.cli``: the ``panns`` command."""

import sys

from service.cli import main

sys.exit(main())
