"""``python -m cxrlake.cli``: the ``cxrlake`` console script without the installed wrapper."""

import sys

from cxrlake.cli import main

sys.exit(main())
