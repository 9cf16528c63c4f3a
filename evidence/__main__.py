import sys

from evidence.harness import main

sys.exit(main())
