"""`python -m selfinstruct.cli ...` is the same as the `selfinstruct` command."""

import sys

from . import main

sys.exit(main())
