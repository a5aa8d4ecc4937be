"""Monitoring: the reference profile, drift of what the service scored against it, the events that turn drift
into a retrain, and batch scoring."""
