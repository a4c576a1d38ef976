#!/usr/bin/env bash
# Make `docker` and `docker compose` usable on this machine, for `make compose-check`.
#
#   scripts/docker-engine.sh start   install what is missing, start dockerd if nothing runs one;
#                                    prints "started" when this call started it, else "running"
#   scripts/docker-engine.sh stop    stop the dockerd this script started (no-op otherwise)
#
# Where Docker is already installed and running (a service manager, Docker Desktop) nothing is
# installed or started. Otherwise, on Debian: the engine from Debian's packages (docker.io), started
# by hand because these machines have no service manager, and Compose v2, which Debian 12 does not
# package, built once from the Go module proxy and kept in the cache. Images and build caches stay
# in dockerd's data root (/var/lib/docker unless NLPKIT_DOCKER_DATA_ROOT says otherwise), so later
# runs rebuild nothing that did not change.
set -euo pipefail

COMPOSE_MODULE=github.com/docker/compose/v5
COMPOSE_VERSION=v5.6.0
CACHE=${NLPKIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nlpkit}
STATE=$CACHE/dockerd
DATA_ROOT=${NLPKIT_DOCKER_DATA_ROOT:-/var/lib/docker}
PLUGIN=$HOME/.docker/cli-plugins/docker-compose

say() { echo "docker-engine: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_engine() {
    command -v dockerd >/dev/null && command -v docker >/dev/null && return
    command -v apt-get >/dev/null || { say "no dockerd and no apt-get: install Docker Engine, then rerun"; exit 1; }
    say "installing Docker Engine from Debian's packages (first run only)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq docker.io containerd runc iptables >/dev/null
}

daemon_answers() { docker info >/dev/null 2>&1; }

start_daemon() {
    if daemon_answers; then echo running; return; fi
    mkdir -p "$STATE"
    say "starting dockerd (data root $DATA_ROOT, log $STATE/dockerd.log)"
    # setsid: the daemon outlives this script and is not hit by a Ctrl-C meant for make.
    as_root setsid dockerd --data-root "$DATA_ROOT" --pidfile "$STATE/dockerd.pid" \
        >"$STATE/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do
        if daemon_answers; then echo started; return; fi
        sleep 1
    done
    say "dockerd did not answer within 60 s; the end of its log:"
    tail -n 20 "$STATE/dockerd.log" >&2
    exit 1
}

install_compose() {
    docker compose version >/dev/null 2>&1 && return
    local built=$CACHE/docker-compose-$COMPOSE_VERSION
    if [ ! -x "$built" ]; then
        command -v go >/dev/null || { say "Docker Compose v2 is missing and there is no Go to build it"; exit 1; }
        say "building Docker Compose $COMPOSE_VERSION from the Go module proxy (first run only, ~3 min)"
        local dir
        dir=$(go mod download -json "$COMPOSE_MODULE@$COMPOSE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
        local src
        src=$(mktemp -d)
        # The module cache is read-only, and `go install module@version` refuses this module for
        # its exclude directives: build a writable copy in place.
        cp -r "$dir"/. "$src"
        chmod -R u+w "$src"
        (cd "$src" && go build -trimpath -ldflags "-w -X $COMPOSE_MODULE/internal.Version=$COMPOSE_VERSION" \
            -o "$built.tmp" ./cmd 2>&1 | grep -v '^go: downloading' >&2 || true)
        [ -x "$built.tmp" ] || { say "building Docker Compose failed"; exit 1; }
        mv "$built.tmp" "$built"
        rm -rf "$src"
    fi
    mkdir -p "$(dirname "$PLUGIN")"
    ln -sf "$built" "$PLUGIN"
}

stop_daemon() {
    local pidfile=$STATE/dockerd.pid
    [ -f "$pidfile" ] || return 0
    local pid
    pid=$(cat "$pidfile")
    as_root kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 1
    done
    say "dockerd ($pid) did not stop within 30 s"
}

case ${1:-} in
start)
    install_engine
    start_daemon
    install_compose
    ;;
stop) stop_daemon ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
