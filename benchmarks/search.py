"""The search benchmark. It lives in searchdec/bench/search.py so that an installed searchdec runs it too
(`searchdec bench search` runs its quick rows); this script runs it in full:
`python benchmarks/search.py [options]`."""

import sys

from searchdec.bench.search import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
