import sys

from edgeqat.cli import main

sys.exit(main())
