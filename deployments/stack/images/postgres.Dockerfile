# The stack's PostgreSQL, from the project's base image and Debian's own package (no image from elsewhere).
# Runs as uid 10001; the first start on an empty volume makes the cluster (password from the PGPASSWORD secret,
# scram-sha-256 for every network client) and the stack's databases (initdb.sql).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 postgres \
 && useradd --system --uid 10001 --gid postgres --home-dir /var/lib/postgresql --shell /bin/sh postgres \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && pg_dropcluster 15 main \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R 10001:10001 /var/lib/postgresql /var/run/postgresql \
 && chmod 0700 /var/lib/postgresql/data
COPY initdb.sql /opt/loan-risk/initdb.sql
COPY images/postgres-entrypoint.sh /opt/loan-risk/entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
USER 10001:10001
EXPOSE 5432
ENTRYPOINT ["/bin/sh", "/opt/loan-risk/entrypoint.sh"]
