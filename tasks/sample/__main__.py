"""``python -m tasks.sample OUT_DIR [--scale F] [--seed N] [--drift NAME]``: write the synthetic files, print one JSON line."""

from tasks.sample.assembly import main

raise SystemExit(main())
