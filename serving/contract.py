"""The source files' field names and value ranges: the part of the dataset contract the service needs.

``tasks/data/contract.py`` imports them and adds the rest. Each tuple is in the files' column order."""

from __future__ import annotations

LOAN_COLUMNS: tuple[str, ...] = (
    "loanId", "anon_ssn", "payFrequency", "apr", "applicationDate", "originated", "originatedDate",
    "nPaidOff", "approved", "isFunded", "loanStatus", "loanAmount", "originallyScheduledPaymentAmount",
    "state", "leadType", "leadCost", "fpStatus", "clarityFraudId", "hasCF",
)  # fmt: skip
PAYMENT_COLUMNS: tuple[str, ...] = (
    "loanId", "installmentIndex", "isCollection", "paymentDate", "principal", "fees", "paymentAmount",
    "paymentStatus", "paymentReturnCode",
)  # fmt: skip

# The clarity file: every column but ``clearfraudscore`` and ``underwritingid`` is named
# ``.underwritingdataclarity.clearfraud.<group>.<name>`` (with the leading dot).
CLARITY_PREFIX = ".underwritingdataclarity.clearfraud."
INQUIRY_FIELDS: tuple[str, ...] = (
    "thirtydaysago", "twentyfourhoursago", "oneminuteago", "onehourago", "ninetydaysago", "sevendaysago",
    "tenminutesago", "fifteendaysago", "threesixtyfivedaysago",
)  # fmt: skip
INDICATOR_FIELDS: tuple[str, ...] = (
    "inquiryonfilecurrentaddressconflict", "totalnumberoffraudindicators", "telephonenumberinconsistentwithaddress",
    "inquiryageyoungerthanssnissuedate", "onfileaddresscautious", "inquiryaddressnonresidential",
    "onfileaddresshighrisk", "ssnreportedmorefrequentlyforanother", "currentaddressreportedbytradeopenlt90days",
    "inputssninvalid", "inputssnissuedatecannotbeverified", "inquiryaddresscautious",
    "morethan3inquiriesinthelast30days", "onfileaddressnonresidential", "creditestablishedpriortossnissuedate",
    "driverlicenseformatinvalid", "inputssnrecordedasdeceased", "inquiryaddresshighrisk",
    "inquirycurrentaddressnotonfile", "bestonfilessnissuedatecannotbeverified",
    "highprobabilityssnbelongstoanother", "maxnumberofssnswithanybankaccount", "bestonfilessnrecordedasdeceased",
    "currentaddressreportedbynewtradeonly", "creditestablishedbeforeage18", "telephonenumberinconsistentwithstate",
    "driverlicenseinconsistentwithonfile", "workphonepreviouslylistedascellphone",
    "workphonepreviouslylistedashomephone",
)  # fmt: skip
# The two indicators that are counts; every other indicator is True/False.
NUMERIC_INDICATORS: tuple[str, ...] = ("totalnumberoffraudindicators", "maxnumberofssnswithanybankaccount")
IDENTITY_FIELDS: tuple[str, ...] = (
    "ssnnamematch", "nameaddressmatch", "phonematchtype", "ssnnamereasoncodedescription", "phonematchresult",
    "nameaddressreasoncodedescription", "phonematchtypedescription", "overallmatchresult", "phonetype",
    "ssndobreasoncode", "ssnnamereasoncode", "nameaddressreasoncode", "ssndobmatch", "overallmatchreasoncode",
)  # fmt: skip


def clarity_column(group: str, name: str) -> str:
    """Full clarity column name, e.g. ``.underwritingdataclarity.clearfraud.clearfraudinquiry.onehourago``."""
    return f"{CLARITY_PREFIX}{group}.{name}"


CLARITY_COLUMNS: tuple[str, ...] = (
    *(clarity_column("clearfraudinquiry", f) for f in INQUIRY_FIELDS),
    *(clarity_column("clearfraudindicator", f) for f in INDICATOR_FIELDS),
    *(clarity_column("clearfraudidentityverification", f) for f in IDENTITY_FIELDS),
    "clearfraudscore",
    "underwritingid",
)

# Value ranges of the numeric source fields (inclusive): training's pandera schema (tasks/data/schemas.py) and the
# service's request model (serving/requests.py) and feature readers (serving/features.py) apply these same bounds.
RANGES: dict[str, tuple[float, float]] = {
    "apr": (0, 1_000),
    "nPaidOff": (0, 100),
    "loanAmount": (0, 10_000),
    "originallyScheduledPaymentAmount": (-10_000, 100_000),
    "leadCost": (0, 1_000),
    "clearfraudscore": (0, 1_000),
    **{clarity_column("clearfraudinquiry", f): (0, 10_000) for f in INQUIRY_FIELDS},
    clarity_column("clearfraudindicator", "totalnumberoffraudindicators"): (0, 100),
    clarity_column("clearfraudindicator", "maxnumberofssnswithanybankaccount"): (0, 1_000_000),
    clarity_column("clearfraudidentityverification", "overallmatchreasoncode"): (0, 1_000),
}

# The categories of the application's own fields (training's pandera schema checks them with ``isin``). The
# service scores a value outside them as a category the model never saw, with a warning, or refuses the record
# (``LOANRISK_UNKNOWN_CATEGORIES=reject``).
PAY_FREQUENCIES: tuple[str, ...] = ("B", "W", "M", "I", "S")
US_STATES: tuple[str, ...] = (
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY",
    "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH",
    "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY",
)  # fmt: skip
TEST_STATES: tuple[str, ...] = ("OH-TEST", "TX-TEST")
STATES: tuple[str, ...] = (*US_STATES, *TEST_STATES)
LEAD_TYPES: tuple[str, ...] = (
    "bvMandatory", "lead", "organic", "prescreen", "rc_returning", "california", "lionpay", "repeat",
    "instant-offer", "express",
)  # fmt: skip
CATEGORIES: dict[str, frozenset[str]] = {
    "payFrequency": frozenset(PAY_FREQUENCIES),
    "state": frozenset(STATES),
    "leadType": frozenset(LEAD_TYPES),
}

# Personal data: never leaves the feature boundary (no bundle, artifact, image, log or prediction log holds it).
PERSONAL_FIELDS = frozenset({"anon_ssn"})
# Identifiers: never features; kept out of everything written, or pseudonymised (serving/privacy.py).
IDENTIFIER_FIELDS = frozenset({"loanId", "anon_ssn", "clarityFraudId", "underwritingid"})
# Identifiers that are clarity report ids: a Unix time in the first 8 hex digits (a feature input), then 16 more.
CLARITY_ID_FIELDS = frozenset({"clarityFraudId", "underwritingid"})
# Outcomes, known only after the decision: never features (leakage).
OUTCOME_FIELDS = frozenset(
    {"originated", "originatedDate", "approved", "isFunded", "loanStatus", "fpStatus"}
    | set(PAYMENT_COLUMNS[1:])
)
KNOWN_FIELDS = frozenset(LOAN_COLUMNS) | frozenset(CLARITY_COLUMNS) | frozenset(PAYMENT_COLUMNS)
