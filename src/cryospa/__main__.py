"""``python -m cryospa`` runs the command-line interface."""

import sys

from cryospa.cli.main import main

sys.exit(main())
