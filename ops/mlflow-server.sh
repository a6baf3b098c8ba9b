#!/usr/bin/env bash
# An MLflow tracking server backed by a real database (PostgreSQL), for tideflow runs.
#
#   ops/mlflow-server.sh                 # PostgreSQL from Debian's packages, on this machine
#   MLFLOW_DB_URI=postgresql+psycopg2://user:pw@db:5432/mlflow ops/mlflow-server.sh   # an existing database
#
# Listens on 127.0.0.1:5000 unless MLFLOW_HOST/MLFLOW_PORT say otherwise (put a TLS
# proxy in front before exposing it). Artifacts are proxied by the server and stored
# under MLFLOW_ARTIFACTS (default ./mlflow-artifacts). Point runs at it with
#   tideflow run ... --tracking-uri http://127.0.0.1:5000   (or MLFLOW_TRACKING_URI)
# Runs keep their metrics through an outage of this server (tideflow buffers them).
set -euo pipefail
HOST=${MLFLOW_HOST:-127.0.0.1}
PORT=${MLFLOW_PORT:-5000}
ARTIFACTS=${MLFLOW_ARTIFACTS:-$PWD/mlflow-artifacts}
VENV=${VENV:-$(dirname "$0")/../.venv}

if [ -z "${MLFLOW_DB_URI:-}" ]; then
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "installing PostgreSQL (Debian's postgresql package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
  fi
  VERSION=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_ctlcluster "$VERSION" main start 2>/dev/null || true
  su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='mlflow'\"" | grep -q 1 \
    || su postgres -c "psql -c \"CREATE ROLE mlflow LOGIN PASSWORD 'mlflow'\""
  su postgres -c "psql -tAc \"SELECT 1 FROM pg_database WHERE datname='mlflow'\"" | grep -q 1 \
    || su postgres -c "createdb -O mlflow mlflow"
  # psycopg2 named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not installed
  MLFLOW_DB_URI=postgresql+psycopg2://mlflow:mlflow@127.0.0.1:5432/mlflow
fi
"$VENV/bin/pip" install -q 'psycopg2-binary>=2.9'
mkdir -p "$ARTIFACTS"
exec "$VENV/bin/mlflow" server --host "$HOST" --port "$PORT" \
  --backend-store-uri "$MLFLOW_DB_URI" \
  --serve-artifacts --artifacts-destination "$ARTIFACTS" \
  --allowed-hosts "$HOST:$PORT,$HOST,localhost:$PORT,localhost"
