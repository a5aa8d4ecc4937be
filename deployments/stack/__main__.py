"""``python -m deployments.stack up|status|env|down``: see :func:`deployments.stack.launcher.main`."""

import sys

from deployments.stack.launcher import main

if __name__ == "__main__":
    sys.exit(main())
