"""``python -m stableemote_utils.cli``: the ``stableemote`` command."""

import sys

from stableemote_utils.cli.main import main

sys.exit(main())
