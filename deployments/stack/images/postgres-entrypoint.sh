#!/bin/sh
# First start on an empty volume: the cluster and the stack's databases; then PostgreSQL in the foreground.
set -eu
password_file="${POSTGRES_PASSWORD_FILE:-/run/secrets/PGPASSWORD}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    [ -s "$password_file" ] || { echo "no password in $password_file (a Compose secret)" >&2; exit 1; }
    initdb -D "$PGDATA" -U postgres --pwfile="$password_file" --auth-local=trust --auth-host=scram-sha-256
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k /var/run/postgresql" -w start
    psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U postgres -f /opt/loan-risk/initdb.sql
    pg_ctl -D "$PGDATA" -m fast -w stop
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -k /var/run/postgresql
