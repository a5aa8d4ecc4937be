"""Synthetic stand-in for the MoneyLion loan dataset, byte-identical per seed: the real files' columns,
formats, categories and quirks; a funded loan's risk drawn from a known probability of decision-time fields
only (in ``true_risk.csv``, so the best achievable ROC-AUC is known). ``python -m tasks.data.sample OUT_DIR
[--scale F] [--seed N] [--drift NAME]`` writes them; read them back with ``keep_default_na=False,
na_values=[""]``."""

from tasks.data.sample.assembly import generate, main, oracle_auc  # noqa: F401
from tasks.data.sample.risk import risk_logit, risk_probability  # noqa: F401
