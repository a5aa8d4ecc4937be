"""The prediction service and the runtime contract (bundle + features); imports no Prefect, Optuna or MLflow."""
