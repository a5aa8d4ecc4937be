"""The dataset contract: the three source files, their columns, dtypes, categories and status lists, as the
real files have them, quirks included (``docs/dataset.md``). The column names come from
:mod:`serving.contract` (the service needs them and must not import ``tasks/``); this module adds what only
training needs."""

from __future__ import annotations

from typing import Literal

# The column names are the service's part of the contract; re-exported so the training side has one door.
from serving.contract import (  # noqa: F401
    CLARITY_COLUMNS,
    CLARITY_PREFIX,
    IDENTIFIER_FIELDS,
    IDENTITY_FIELDS,
    INDICATOR_FIELDS,
    INQUIRY_FIELDS,
    LEAD_TYPES,
    LOAN_COLUMNS,
    NUMERIC_INDICATORS,
    PAY_FREQUENCIES,
    PAYMENT_COLUMNS,
    PERSONAL_FIELDS,
    RANGES,
    STATES,
    clarity_column,
)

# --- files -------------------------------------------------------------------------------------------------

LOAN_FILE = "loan.csv"
PAYMENT_FILE = "payment.csv"
CLARITY_FILE = "clarity_underwriting_variables.csv"
DATA_FILES: tuple[str, ...] = (LOAN_FILE, PAYMENT_FILE, CLARITY_FILE)
FILES: dict[str, str] = {"loan": LOAN_FILE, "payment": PAYMENT_FILE, "clarity": CLARITY_FILE}
COLUMNS = {"loan": LOAN_COLUMNS, "payment": PAYMENT_COLUMNS, "clarity": CLARITY_COLUMNS}

# --- dtypes ------------------------------------------------------------------------------------------------
# How a column's text is read: ``float`` (missing allowed as NaN), ``int`` (whole numbers), ``bool``
# (True/False, 1/0), ``timestamp`` (ISO text, kept as text) and ``str``.
Kind = Literal["str", "float", "int", "bool", "timestamp"]

LOAN_DTYPES: dict[str, Kind] = {
    "loanId": "str", "anon_ssn": "str", "payFrequency": "str", "apr": "float", "applicationDate": "timestamp",
    "originated": "bool", "originatedDate": "timestamp", "nPaidOff": "float", "approved": "bool",
    "isFunded": "int", "loanStatus": "str", "loanAmount": "float", "originallyScheduledPaymentAmount": "float",
    "state": "str", "leadType": "str", "leadCost": "int", "fpStatus": "str", "clarityFraudId": "str",
    "hasCF": "int",
}  # fmt: skip
PAYMENT_DTYPES: dict[str, Kind] = {
    "loanId": "str", "installmentIndex": "int", "isCollection": "bool", "paymentDate": "timestamp",
    "principal": "float", "fees": "float", "paymentAmount": "float", "paymentStatus": "str",
    "paymentReturnCode": "str",
}  # fmt: skip


def _clarity_kind(column: str) -> Kind:
    group, _, name = column.removeprefix(CLARITY_PREFIX).rpartition(".")
    if column == "clearfraudscore" or group == "clearfraudinquiry" or name == "overallmatchreasoncode":
        return "float"
    if group == "clearfraudindicator":
        return "float" if name in NUMERIC_INDICATORS else "bool"
    return "str"  # underwritingid, identity verification results and codes


CLARITY_DTYPES: dict[str, Kind] = {column: _clarity_kind(column) for column in CLARITY_COLUMNS}
DTYPES = {"loan": LOAN_DTYPES, "payment": PAYMENT_DTYPES, "clarity": CLARITY_DTYPES}

# Columns that are never blank in the real files (every other column may be).
REQUIRED: dict[str, frozenset[str]] = {
    "loan": frozenset(
        {"anon_ssn", "applicationDate", "originated", "approved", "isFunded", "leadType", "leadCost", "hasCF"}
        | {"originallyScheduledPaymentAmount"}
    ),
    "payment": frozenset(set(PAYMENT_COLUMNS) - {"paymentReturnCode"}),
    "clarity": frozenset({"underwritingid"}),
}
# Columns whose values identify a row: unique within their file (repeats are quarantined).
UNIQUE_IDS: dict[str, str] = {"loan": "loanId", "clarity": "underwritingid"}
# Identifier and personal fields: never quoted in a message, pseudonymised wherever a row is written out.
WITHHELD = frozenset(IDENTIFIER_FIELDS | PERSONAL_FIELDS)
IDENTIFIER_COLUMNS = {key: tuple(c for c in columns if c in WITHHELD) for key, columns in COLUMNS.items()}

# --- categories and status lists -----------------------------------------------------------------------------

# The label: a loan is risky (1) with a bad status, good (0) with a good one, and left out otherwise.
BAD_LABEL_STATUSES: tuple[str, ...] = (
    "External Collection", "Internal Collection", "Returned Item", "Charged Off", "Charged Off Paid Off",
    "Settled Bankruptcy", "Settlement Paid Off", "Settlement Pending Paid Off",
)  # fmt: skip
GOOD_LABEL_STATUSES: tuple[str, ...] = ("Paid Off Loan", "New Loan", "Pending Paid Off")
# Good statuses whose outcome is not final yet (a loan still running, a pay-off not cleared): the "matured" label
# policy leaves them out instead of counting them good.
NOT_FINAL_STATUSES: tuple[str, ...] = ("New Loan", "Pending Paid Off")
# Statuses of loans that never became a funded loan (so they carry no label).
UNLABELLED_STATUSES: tuple[str, ...] = (
    "Withdrawn Application", "Rejected", "CSR Voided New Loan", "Credit Return Void", "Customer Voided New Loan",
    "Pending Application Fee", "Pending Rescind", "Pending Application", "Voided New Loan",
    "Customver Voided New Loan",
)  # fmt: skip
VOIDED_STATUSES: tuple[str, ...] = (
    "CSR Voided New Loan", "Credit Return Void", "Customer Voided New Loan", "Voided New Loan",
    "Customver Voided New Loan",
)  # fmt: skip
LOAN_STATUSES: tuple[str, ...] = (*UNLABELLED_STATUSES, *BAD_LABEL_STATUSES, *GOOD_LABEL_STATUSES)
FP_STATUSES: tuple[str, ...] = (
    "Checked", "No Payments", "Rejected", "No Schedule", "Cancelled", "Skipped", "Pending", "Returned",
)  # fmt: skip
# ``None`` is a literal status in payment.csv, not a missing value.
PAYMENT_STATUSES: tuple[str, ...] = (
    "Cancelled", "Checked", "None", "Rejected", "Pending", "Skipped", "Rejected Awaiting Retry", "Complete",
    "Returned",
)  # fmt: skip
MATCH_RESULTS: tuple[str, ...] = ("match", "partial", "mismatch", "unavailable", "invalid", "other")
PHONE_MATCH_TYPES: tuple[str, ...] = ("M", "U", "FA", "LA", "A", "F", "P", "L")
