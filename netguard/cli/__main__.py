"""
C{python -m netguard.cli}: the C{netguard} command.
"""

import sys

from netguard.cli import main

sys.exit(main())
