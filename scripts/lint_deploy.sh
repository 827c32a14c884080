#!/usr/bin/env bash
# Lints deploy/ and the Dockerfile offline, without a container engine:
#   - yamllint --strict (config deploy/.yamllint) on every YAML file of deploy/;
#   - docker-compose config -q (Debian's docker-compose v1: the Compose schema, no daemon needed);
#   - deploy/validate/validate.js: Kubernetes manifests against the API's OpenAPI schemas (types, formats,
#     required fields) and strictly (unknown fields), the kustomization, the project's rules for the
#     manifests and the compose file, and the Dockerfile (dockerfile-utils, dockerfilelint);
#   - negative checks: broken copies made on the fly must be rejected by each tool, so no step can pass
#     vacuously (plus validate.js self-test: every stage must catch the breakage meant for it).
# Installs what it needs (Debian: yamllint docker-compose; npm ci in deploy/validate). Idempotent.
# Exit status: 0 clean, 1 on any finding.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$PWD
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------------------------------- install
need=()
command -v yamllint >/dev/null 2>&1 || need+=(yamllint)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  apt_install() { apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null; }
  if ! apt_install "${need[@]}"; then  # a fresh machine may have no package lists yet
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
    apt_install "${need[@]}" || { echo "cannot install ${need[*]}" >&2; exit 1; }
  fi
fi
validate_dir=deploy/validate
stamp=$validate_dir/node_modules/.lint_deploy.stamp
lock_sum=$(sha256sum "$validate_dir/package-lock.json" "$validate_dir/package.json" | sha256sum | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$lock_sum" ]; then
  echo "== npm ci in $validate_dir"
  (cd "$validate_dir" && npm ci --no-audit --no-fund --loglevel=error) || { echo "npm ci failed" >&2; exit 1; }
  echo "$lock_sum" >"$stamp"
fi

# ------------------------------------------------------------------------------------------ lint
failed=()
step() {  # step NAME COMMAND...: runs it, records a failure
  local name=$1
  shift
  echo "== $name"
  if "$@"; then echo "   ok"; else echo "   FAILED: $name" >&2; failed+=("$name"); fi
}
expect_failure() {  # expect_failure NAME COMMAND...: the command must fail (its output is hidden)
  local name=$1
  shift
  echo "== negative: $name"
  if "$@" >"$work/negative.log" 2>&1; then
    echo "   FAILED: accepted a broken file: $name" >&2
    failed+=("negative: $name")
  else
    echo "   ok, rejected: $( (grep -m1 -E 'error|invalid|Unsupported|\[' "$work/negative.log" || head -1 "$work/negative.log") | sed 's/^ *//' | cut -c1-150)"
  fi
}
work=$(mktemp -d /tmp/lint_deploy.XXXXXX)
trap 'rm -rf "$work"' EXIT
validate=(node "$validate_dir/validate.js")

step "yamllint deploy/" yamllint --strict -c deploy/.yamllint deploy/
# No engine is involved: point the client at a socket that does not exist to be sure.
step "docker-compose config" env DOCKER_HOST="unix://$work/no-daemon.sock" \
  docker-compose -f deploy/docker-compose.yml config -q
step "kubernetes manifests (deploy/k8s)" "${validate[@]}" k8s deploy/k8s "$root"
step "docker-compose project rules" "${validate[@]}" compose deploy/docker-compose.yml "$root"
step "Dockerfile" "${validate[@]}" dockerfile Dockerfile
step "validator self-test" "${validate[@]}" self-test "$root"

# Broken copies, made here, must be rejected by the tools themselves.
mkdir -p "$work/k8s" "$work/yaml"
cp deploy/k8s/*.yaml "$work/k8s/"
sed -i '0,/imagePullPolicy:/s//imagePullPolicyy:/' "$work/k8s/deployment.yaml"
grep -q imagePullPolicyy "$work/k8s/deployment.yaml" || failed+=("negative: could not break deployment.yaml")
expect_failure "k8s manifest with a misspelt field" "${validate[@]}" k8s "$work/k8s" "$root"
cp deploy/k8s/*.yaml "$work/k8s/"
sed -i 's/^  maxReplicas: 8$/  maxReplicas: "eight"/' "$work/k8s/hpa.yaml"
grep -q '"eight"' "$work/k8s/hpa.yaml" || failed+=("negative: could not break hpa.yaml")
expect_failure "k8s manifest with a wrong type" "${validate[@]}" k8s "$work/k8s" "$root"
sed 's/^    healthcheck:/    helthcheck:/' deploy/docker-compose.yml >"$work/docker-compose.yml"
expect_failure "compose file with a misspelt key" env DOCKER_HOST="unix://$work/no-daemon.sock" \
  docker-compose -f "$work/docker-compose.yml" config -q
cp deploy/.yamllint "$work/yaml/.yamllint"
sed 's/^  clusterIP: None$/  clusterIP: None\n  clusterIP: None/' deploy/k8s/service.yaml >"$work/yaml/service.yaml"
expect_failure "yaml with a duplicate key" yamllint --strict -c "$work/yaml/.yamllint" "$work/yaml/service.yaml"
sed 's/^EXPOSE 50051.*/EXPOSE grpc/' Dockerfile >"$work/Dockerfile"
expect_failure "Dockerfile with an invalid EXPOSE" "${validate[@]}" dockerfile "$work/Dockerfile"

if [ ${#failed[@]} -gt 0 ]; then
  printf 'lint_deploy: %d step(s) failed:\n' "${#failed[@]}" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "lint_deploy: all checks passed"
