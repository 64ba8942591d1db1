"""The speculative benchmark. It lives in searchdec/bench/speculative.py so that an installed searchdec runs it too
(`searchdec bench speculative` runs its quick rows); this script runs it in full:
`python benchmarks/speculative.py [options]`."""

import sys

from searchdec.bench.speculative import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
