"""The grammars benchmark. It lives in searchdec/bench/grammars.py so that an installed searchdec runs it too
(`searchdec bench grammars` runs its quick rows); this script runs it in full:
`python benchmarks/grammars.py [options]`."""

import sys

from searchdec.bench.grammars import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
