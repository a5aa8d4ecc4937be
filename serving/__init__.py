"""The prediction service and the runtime contract (model bundle + row-level features).

Nothing in this package imports Prefect, Optuna or MLflow: the serving image ships only this package.
"""
