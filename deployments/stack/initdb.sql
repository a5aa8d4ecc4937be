-- One database per service of the stack (run once by the postgres image on an empty volume).
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE optuna;
