#!/usr/bin/env bash
# Local Docker engine + Docker registry (htpasswd auth) + locally built Python base image,
# for the integration tests and CI. No Docker Hub is needed: the base image is made with
# debootstrap from the machine's own Debian mirror.
#
#   bash tests/infra/services.sh install   # apt-get install what is missing (quick no-op otherwise), PostgreSQL too
#   bash tests/infra/services.sh start     # engine + registry + base image; prints `export ...` lines
#   bash tests/infra/services.sh status    # exit 0 when engine and registry both answer
#   bash tests/infra/services.sh stop      # stop registry and engine by PID (idempotent)
#   bash tests/infra/services.sh selftest  # docker login + push a tiny image with the docker CLI
#   bash tests/infra/services.sh gc REPO...  # remove these registry repositories, garbage-collect the registry
#
# Callers:  bash tests/infra/services.sh start >/dev/null && source .state/docker/env.sh
#     (or:  eval "$(bash tests/infra/services.sh start)")
# Inputs (env): LOANRISK_DOCKER_STATE_DIR (default <repo>/.state/docker), REGISTRY_PORT (5055), REGISTRY_USER (ci),
#               REGISTRY_PASSWORD (ci-password), DOCKER_START_TIMEOUT (60 s), LOANRISK_INFRA_BASE_IMAGE.
# Diagnostics go to stderr; stdout carries only the `export` lines of `start`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# One fixed home for the engine, registry and cached base rootfs, shared by every caller. Deliberately not
# under LOANRISK_STATE_DIR: tests/conftest.py points that at a throwaway folder per pytest session, which
# would mean a cold debootstrap and a second dockerd (fighting over docker0/iptables) per session.
D="${LOANRISK_DOCKER_STATE_DIR:-$REPO/.state/docker}"
ENGINE_DIR="$D/engine"
REG_DIR="$D/registry"
BASE_DIR="$D/base"
SOCK="$D/docker.sock"
ENV_FILE="$D/env.sh"
DOCKERD_PID="$D/dockerd.pid"
REGISTRY_PID="$D/registry.pid"

REGISTRY_PORT="${REGISTRY_PORT:-5055}"
REGISTRY_USER="${REGISTRY_USER:-ci}"
REGISTRY_PASSWORD="${REGISTRY_PASSWORD:-ci-password}"
REGISTRY="localhost:${REGISTRY_PORT}"
BASE_IMAGE="${LOANRISK_INFRA_BASE_IMAGE:-localhost/python-base:3.11-bookworm}"
DOCKER_START_TIMEOUT="${DOCKER_START_TIMEOUT:-60}"
# Bump when the debootstrap recipe changes so a stale cached rootfs is not re-imported.
BASE_RECIPE="v1-bookworm-minbase-python3,python3-pip,python3-venv,ca-certificates"
BASE_TAR="$BASE_DIR/rootfs-${BASE_RECIPE//,/_}.tar"

# chromium: the model card's browser test; postgresql: the stack tests' PostgreSQL (deployments.stack runs a cluster of its own); docker-compose: checks
# deployments/stack/compose.yaml (the Python 1.29 implementation, the one Debian has).
PACKAGES=(docker.io docker-registry debootstrap wrk apache2-utils curl shellcheck chromium postgresql docker-compose)

log() { echo "[services] $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

dk() { DOCKER_HOST="unix://$SOCK" docker "$@"; }

pid_alive() { # pidfile -> 0 when the recorded process is alive
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(cat "$1")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

engine_up() { [[ -S "$SOCK" ]] && timeout 10 env DOCKER_HOST="unix://$SOCK" docker info >/dev/null 2>&1; }

registry_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:${REGISTRY_PORT}/v2/" || true; }

registry_up() { [[ "$(registry_code)" == "401" ]]; }

# ---------------------------------------------------------------------------------------------
cmd_install() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "packages present: ${PACKAGES[*]}"
        return 0
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

ensure_installed() {
    local b
    for b in dockerd docker docker-registry debootstrap htpasswd curl; do
        command -v "$b" >/dev/null 2>&1 || {
            cmd_install
            return
        }
    done
}

# Run a daemon in its own session, detached from our stdio and from the lock fd; record its PID.
launch() { # pidfile logfile cmd...
    local pidfile="$1" logfile="$2"
    shift 2
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 9>&- &
    local i
    for i in $(seq 50); do
        [[ -s "$pidfile" ]] && return 0
        sleep 0.1
    done
    die "could not launch $1"
}

start_engine() {
    if engine_up; then
        log "docker engine already answering on unix://$SOCK"
        return 0
    fi
    if pid_alive "$DOCKERD_PID"; then
        log "dockerd (pid $(cat "$DOCKERD_PID")) alive but not answering yet; waiting"
    else
        mkdir -p "$ENGINE_DIR/data" "$ENGINE_DIR/exec"
        rm -f "$SOCK" "$ENGINE_DIR/dockerd.internal.pid"
        log "starting dockerd (data-root $ENGINE_DIR/data)"
        launch "$DOCKERD_PID" "$D/dockerd.log" dockerd \
            --data-root "$ENGINE_DIR/data" \
            --exec-root "$ENGINE_DIR/exec" \
            --host "unix://$SOCK" \
            --pidfile "$ENGINE_DIR/dockerd.internal.pid"
    fi
    local deadline=$((SECONDS + DOCKER_START_TIMEOUT))
    until engine_up; do
        if ! pid_alive "$DOCKERD_PID"; then
            tail -n 30 "$D/dockerd.log" >&2 || true
            die "dockerd exited during startup (log: $D/dockerd.log)"
        fi
        ((SECONDS < deadline)) || {
            tail -n 30 "$D/dockerd.log" >&2 || true
            die "dockerd did not answer within ${DOCKER_START_TIMEOUT}s (log: $D/dockerd.log)"
        }
        sleep 0.5
    done
    log "docker engine up: $(dk version --format '{{.Server.Version}}' 2>/dev/null) ($(dk info --format '{{.Driver}}' 2>/dev/null))"
}

write_registry_config() {
    mkdir -p "$REG_DIR/data"
    # bcrypt (-B) is the only hash distribution's htpasswd auth accepts.
    htpasswd -Bbn "$REGISTRY_USER" "$REGISTRY_PASSWORD" >"$REG_DIR/htpasswd.tmp"
    mv "$REG_DIR/htpasswd.tmp" "$REG_DIR/htpasswd"
    cat >"$REG_DIR/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog: {disabled: true}
storage:
  filesystem: {rootdirectory: $REG_DIR/data}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:${REGISTRY_PORT}
  secret: loan-risk-local-test-registry
auth:
  htpasswd: {realm: basic-realm, path: $REG_DIR/htpasswd}
EOF
}

start_registry() {
    if pid_alive "$REGISTRY_PID" && registry_up; then
        write_registry_config # keeps htpasswd in step with REGISTRY_PASSWORD (reloaded on change)
        log "registry already answering on $REGISTRY"
        return 0
    fi
    if ! pid_alive "$REGISTRY_PID"; then
        local code
        code="$(registry_code)"
        [[ "$code" == "000" ]] || die "port ${REGISTRY_PORT} is answered by another process (HTTP $code); set REGISTRY_PORT"
        write_registry_config
        log "starting docker-registry on 127.0.0.1:${REGISTRY_PORT}"
        # distribution reads REGISTRY_* variables as config overrides: keep ours out of its environment.
        launch "$REGISTRY_PID" "$D/registry.log" \
            env -u REGISTRY_PORT -u REGISTRY_USER -u REGISTRY_PASSWORD docker-registry serve "$REG_DIR/config.yml"
    fi
    local deadline=$((SECONDS + 30))
    until registry_up; do
        if ! pid_alive "$REGISTRY_PID"; then
            tail -n 30 "$D/registry.log" >&2 || true
            die "docker-registry exited during startup (log: $D/registry.log)"
        fi
        ((SECONDS < deadline)) || die "registry did not answer 401 on /v2/ within 30s (log: $D/registry.log)"
        sleep 0.3
    done
    log "registry up on $REGISTRY (htpasswd user $REGISTRY_USER)"
}

debian_mirror() {
    local m=""
    [[ -r /etc/apt/sources.list.d/debian.sources ]] &&
        m="$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    [[ -z "$m" && -r /etc/apt/sources.list ]] &&
        m="$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)"
    echo "${m:-http://deb.debian.org/debian}"
}

build_rootfs_tar() {
    mkdir -p "$BASE_DIR"
    local work mirror t0=$SECONDS
    mirror="$(debian_mirror)"
    work="$(mktemp -d "$BASE_DIR/build.XXXXXX")"
    log "debootstrap bookworm (minbase + python3) from $mirror; about a minute"
    if ! debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
        bookworm "$work/rootfs" "$mirror" >"$BASE_DIR/debootstrap.log" 2>&1; then
        tail -n 30 "$BASE_DIR/debootstrap.log" >&2 || true
        rm -rf "$work"
        die "debootstrap failed (log: $BASE_DIR/debootstrap.log)"
    fi
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"* \
        "$work/rootfs/debootstrap"
    tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
    mv "$work/rootfs.tar" "$BASE_TAR"
    rm -rf "$work"
    log "rootfs cached at $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1), $((SECONDS - t0))s)"
}

ensure_base_image() {
    if dk image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE present"
        return 0
    fi
    [[ -s "$BASE_TAR" ]] || build_rootfs_tar
    local t0=$SECONDS
    dk import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "debootstrap $BASE_RECIPE" \
        "$BASE_TAR" "$BASE_IMAGE" >/dev/null
    log "imported $BASE_IMAGE from cached rootfs ($((SECONDS - t0))s)"
}

write_env() {
    cat >"$ENV_FILE.tmp" <<EOF
export DOCKER_HOST=unix://$SOCK
export LOANRISK_DOCKER_HOST=unix://$SOCK
export LOANRISK_IMAGE_REGISTRY=$REGISTRY
export LOANRISK_REGISTRY_USERNAME=$REGISTRY_USER
export LOANRISK_REGISTRY_PASSWORD=$REGISTRY_PASSWORD
export LOANRISK_BASE_IMAGE=$BASE_IMAGE
EOF
    mv "$ENV_FILE.tmp" "$ENV_FILE"
    cat "$ENV_FILE"
}

cmd_start() {
    ensure_installed
    mkdir -p "$D"
    exec 9>"$D/.lock"
    flock -w 900 9 || die "another services.sh start holds $D/.lock"
    local t0=$SECONDS
    start_engine
    start_registry
    ensure_base_image
    write_env
    flock -u 9
    log "ready in $((SECONDS - t0))s; source $ENV_FILE"
}

stop_pid() { # name pidfile timeout
    local name="$1" pidfile="$2" timeout="$3" pid
    if ! pid_alive "$pidfile"; then
        rm -f "$pidfile"
        log "$name not running"
        return 0
    fi
    pid="$(cat "$pidfile")"
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + timeout))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "$name did not exit in ${timeout}s; killing its process group"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.3
    done
    rm -f "$pidfile"
}

cmd_stop() {
    stop_pid docker-registry "$REGISTRY_PID" 10
    stop_pid dockerd "$DOCKERD_PID" 40
    rm -f "$SOCK" "$ENGINE_DIR/dockerd.internal.pid"
}

# Remove registry repositories (a test session's) and the blobs only they used: with the registry stopped, the
# repositories' folders go, then distribution's garbage collector sweeps unreferenced blobs; the registry is
# started again when it was running.
cmd_gc() {
    local repo was_running=0 root="$REG_DIR/data/docker/registry/v2/repositories"
    for repo in "$@"; do
        [[ "$repo" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "not a repository name: $repo"
    done
    [[ -f "$REG_DIR/config.yml" ]] || return 0
    pid_alive "$REGISTRY_PID" && was_running=1
    stop_pid docker-registry "$REGISTRY_PID" 10
    for repo in "$@"; do
        rm -rf "${root:?}/$repo"
    done
    env -u REGISTRY_PORT -u REGISTRY_USER -u REGISTRY_PASSWORD \
        docker-registry garbage-collect --delete-untagged "$REG_DIR/config.yml" >>"$D/registry-gc.log" 2>&1 ||
        die "garbage-collect failed (log: $D/registry-gc.log)"
    log "removed $# repositories and garbage-collected the registry ($(du -sh "$REG_DIR/data" | cut -f1) left)"
    ((was_running)) && start_registry
    return 0
}

cmd_status() {
    local ok=0
    if engine_up; then log "engine: up (unix://$SOCK)"; else
        log "engine: down"
        ok=1
    fi
    if registry_up; then log "registry: up ($REGISTRY)"; else
        log "registry: down"
        ok=1
    fi
    return $ok
}

# Push a tiny one-file image with the docker CLI after `docker login`, with a throwaway client config.
cmd_selftest() {
    cmd_status || die "services are not up; run: $0 start"
    local tmp
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' RETURN
    echo "selftest $(date -u +%s)" >"$tmp/hello.txt"
    tar -C "$tmp" -cf "$tmp/img.tar" hello.txt
    export DOCKER_CONFIG="$tmp/config"
    dk import "$tmp/img.tar" "$REGISTRY/infra-selftest:latest" >/dev/null
    echo "$REGISTRY_PASSWORD" | dk login --username "$REGISTRY_USER" --password-stdin "$REGISTRY" >&2
    dk push "$REGISTRY/infra-selftest:latest" >&2
    dk logout "$REGISTRY" >&2
    dk rmi "$REGISTRY/infra-selftest:latest" >/dev/null
    curl -sf -u "$REGISTRY_USER:$REGISTRY_PASSWORD" "http://127.0.0.1:${REGISTRY_PORT}/v2/infra-selftest/tags/list" >&2
    echo >&2
    log "selftest ok: login + push to $REGISTRY"
}

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
selftest) cmd_selftest ;;
gc)
    shift
    cmd_gc "$@"
    ;;
*)
    echo "usage: $0 {install|start|stop|status|selftest|gc REPOSITORY...}" >&2
    exit 2
    ;;
esac
