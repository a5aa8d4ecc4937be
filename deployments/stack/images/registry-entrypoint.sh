#!/bin/sh
# The htpasswd file from the REGISTRY_PASSWORD secret (bcrypt, the only hash the registry accepts), then the registry.
set -eu
password_file="${REGISTRY_PASSWORD_FILE:-/run/secrets/REGISTRY_PASSWORD}"
[ -s "$password_file" ] || { echo "no password in $password_file (a Compose secret)" >&2; exit 1; }
umask 077
htpasswd -iBn "${REGISTRY_USERNAME:-loanrisk}" <"$password_file" >/var/lib/loan-risk-registry/htpasswd
exec docker-registry serve /etc/loan-risk/registry.yml
