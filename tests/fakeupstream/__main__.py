"""``python -m tests.fakeupstream --port 9100 ...``: see the package docstring."""

import sys

from tests.fakeupstream.server import main

main(sys.argv[1:])
