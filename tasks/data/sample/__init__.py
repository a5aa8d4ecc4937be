"""Synthetic stand-in for the MoneyLion loan dataset: the real files' columns, formats, categories, key relations
and quirks (:mod:`tasks.data.contract`), byte-identical per seed. A funded loan's risk is drawn from a known
probability of decision-time fields only (written to ``true_risk.csv``, so the best achievable ROC-AUC is known);
outcome fields are drawn from the label and leak it as the real ones do. Read the files back with
``keep_default_na=False, na_values=[""]`` to keep the literal ``None`` payment status.
``python -m tasks.data.sample OUT_DIR [--scale F] [--seed N] [--drift NAME]`` writes them.
"""

from tasks.data.sample.assembly import generate, main, oracle_auc  # noqa: F401
from tasks.data.sample.risk import risk_logit, risk_probability  # noqa: F401
