import sys

from pyagent_simnet.cli import main

sys.exit(main())
