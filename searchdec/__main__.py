import sys

from searchdec.cli import main

sys.exit(main())
