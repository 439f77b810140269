import sys

from tidings.server.cli import main

sys.exit(main())
