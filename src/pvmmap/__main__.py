import sys

from pvmmap.cli import main

sys.exit(main())
