"""The decode benchmark. It lives in searchdec/bench/decode.py so that an installed searchdec runs it too
(`searchdec bench decode` runs its quick rows); this script runs it in full:
`python benchmarks/decode.py [options]`."""

import sys

from searchdec.bench.decode import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
