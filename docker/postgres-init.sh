#!/bin/sh
# Runs once, on the first start of the postgres container (docker-entrypoint-initdb.d): the official image
# creates POSTGRES_DB for Dagster; MLflow gets its own database because both tools own a table called `runs`.
set -eu
: "${MLFLOW_POSTGRES_DB:?MLFLOW_POSTGRES_DB must name the MLflow database}"
if [ "$(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$MLFLOW_POSTGRES_DB'")" != "1" ]; then
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -c "CREATE DATABASE \"$MLFLOW_POSTGRES_DB\""
    echo "exampass: created database $MLFLOW_POSTGRES_DB for MLflow"
fi
