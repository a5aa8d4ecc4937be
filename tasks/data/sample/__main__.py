"""``python -m tasks.data.sample OUT_DIR [--scale F] [--seed N] [--drift NAME]``: write the synthetic files, print one JSON line."""

from tasks.data.sample.assembly import main

raise SystemExit(main())
