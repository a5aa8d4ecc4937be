"""Model: features, the time split, tuning (Optuna), training (CatBoost), the credit-grade evaluation and the
bundle the service loads.

- ``features``, ``split``: the model table and the time split;
- ``tune`` (objective, worker loop), ``tune_study`` (the shared Optuna study), ``tune_workers`` (data, fan-out);
- ``train``: CatBoost; ``evaluate``: metrics, threshold, report; ``credit``: credit metrics; ``plots``;
- ``package``: the bundle.
"""
