import sys

from tunebench.bench.cli import main

sys.exit(main())
