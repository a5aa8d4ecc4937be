"""Synthetic stand-in for the MoneyLion loan dataset (``loan.csv``, ``payment.csv``,
``clarity_underwriting_variables.csv``), by part.

The three files have exactly the real files' columns, value formats, categories, key relations and quirks
(the dataset contract, :mod:`tasks.data.contract`). Whether a funded loan turns out risky is drawn from a known
probability that depends on decision-time fields only (the application and the clarity report) plus an
unobserved noise term; that probability is written to a separate ``true_risk.csv`` so the best achievable
ROC-AUC (the "oracle") is known. Outcome fields (loanStatus, fpStatus, every payment field) are drawn from the
label, so they leak it the way the real outcome fields do. The same seed gives byte-identical files.

Read the files back with ``pd.read_csv(path, keep_default_na=False, na_values=[""])`` to keep the literal
``None`` payment status (pandas would otherwise read it as missing). Command line:
``python -m tasks.data.sample OUT_DIR [--scale F] [--seed N] [--drift NAME]``.
"""

from tasks.data.sample.assembly import RISK_FILE, effective_scale, generate, label_frame, main, oracle_auc
from tasks.data.sample.risk import risk_logit, risk_probability

__all__ = [
    "RISK_FILE",
    "effective_scale",
    "generate",
    "label_frame",
    "main",
    "oracle_auc",
    "risk_logit",
    "risk_probability",
]
