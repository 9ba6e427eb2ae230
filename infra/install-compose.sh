#!/usr/bin/env bash
# The docker client here has no compose plugin and no Docker engine; `docker compose config`
# (which validates docker-compose.yml without an engine) needs the plugin. Build it from
# its Go module when it is missing.
set -euo pipefail
VERSION=${COMPOSE_VERSION:-v2.40.3}
docker compose version >/dev/null 2>&1 && exit 0
command -v docker >/dev/null 2>&1 || { echo "docker client not installed; skipping compose plugin"; exit 0; }
command -v go >/dev/null 2>&1 || { echo "go is needed to build the docker compose plugin" >&2; exit 1; }
echo "building the docker compose plugin $VERSION from its Go module (once)"
dir=$(go mod download -json "github.com/docker/compose/v2@$VERSION" | python3 -c "import json,sys; print(json.load(sys.stdin)['Dir'])")
mkdir -p "$HOME/.docker/cli-plugins"
(cd "$dir" && go build -trimpath -o "$HOME/.docker/cli-plugins/docker-compose" ./cmd)
docker compose version
