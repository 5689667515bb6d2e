#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d): the gate's
# ledger gets a database and a role of its own, apart from MLflow's. Only the gate writes it.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE ROLE gate LOGIN PASSWORD '${GATE_DB_PASSWORD}';
CREATE DATABASE gate OWNER gate;
REVOKE ALL ON DATABASE gate FROM PUBLIC;
SQL
