-- One database per service of the stack (run once by the stack's PostgreSQL image on an empty volume).
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE optuna;
