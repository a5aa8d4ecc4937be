# The stack's image registry: Docker's distribution from Debian's package, on the project's base image. Runs as
# uid 10001; htpasswd (bcrypt) made at start from the REGISTRY_PASSWORD secret, never stored in the image.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker-registry apache2-utils \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/registry /var/lib/loan-risk-registry \
 && chown 10001:10001 /var/lib/registry /var/lib/loan-risk-registry
COPY images/registry-config.yml /etc/loan-risk/registry.yml
COPY images/registry-entrypoint.sh /opt/loan-risk/entrypoint.sh
USER 10001:10001
EXPOSE 5000
ENTRYPOINT ["/bin/sh", "/opt/loan-risk/entrypoint.sh"]
