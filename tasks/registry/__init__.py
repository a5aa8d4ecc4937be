"""Registry: the one door to MLflow (runs, versions, aliases) and the promotion gate."""
