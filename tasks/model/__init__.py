"""Model: features, the time split, tuning (Optuna), training (CatBoost), the credit-grade evaluation and the
bundle the service loads."""
