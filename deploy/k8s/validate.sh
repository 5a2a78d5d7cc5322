#!/usr/bin/env bash
# Validates the manifests in this folder against the Kubernetes OpenAPI schemas,
# strictly (an unknown or misspelt field is an error), offline: the
# kubernetes-validate package from PyPI bundles the schemas of every release. It
# is installed once into a venv outside the clone. Also checks that the
# kustomization lists files that exist, and that both workloads keep the
# restricted Pod Security settings.
#
#   bash deploy/k8s/validate.sh
set -euo pipefail
cd "$(dirname "$0")"

venv=${PW_K8S_VENV:-/var/tmp/portwatch-k8s-venv}
version=1.37.0
# The oldest Kubernetes these manifests claim (sysctls, fsGroupChangePolicy,
# seccompProfile fields: 1.20+), and the newest the validator knows.
k8s_versions=(1.27.0 1.37.0)

if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$version" ]; then
    echo "installing kubernetes-validate $version into $venv"
    # Debian's own interpreter, as the rest of CI uses.
    if ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    /usr/bin/python3 -m venv --clear "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version"
fi

files=(namespace.yaml collector.yaml agent.yaml agent-join-secret.example.yaml)
while read -r f; do
    [ -f "$f" ] || { echo "kustomization.yaml lists $f, which does not exist" >&2; exit 1; }
done < <(sed -n 's/^  - \(.*\.yaml\)$/\1/p' kustomization.yaml)
for k in "${k8s_versions[@]}"; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" "${files[@]}"
    echo "   ok: ${files[*]} valid for Kubernetes $k (strict)"
done

# What the schema cannot say: the restricted profile is really applied.
"$venv/bin/python" - "${files[@]}" <<'PY'
import sys, yaml
bad = []
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        name = f'{path}: {doc["kind"]}/{doc["metadata"]["name"]}'
        psc = pod.get("securityContext", {})
        if not psc.get("runAsNonRoot") or psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            bad.append(f"{name}: pod securityContext")
        if pod.get("automountServiceAccountToken") is not False:
            bad.append(f"{name}: automountServiceAccountToken")
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c.get("securityContext", {})
            if (sc.get("allowPrivilegeEscalation") is not False or not sc.get("readOnlyRootFilesystem")
                    or sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add")):
                bad.append(f"{name}: container {c['name']} securityContext")
            if "memory" not in c.get("resources", {}).get("limits", {}):
                bad.append(f"{name}: container {c['name']} has no memory limit")
if bad:
    sys.exit("not restricted enough:\n  " + "\n  ".join(bad))
print("   ok: every pod non-root, RuntimeDefault seccomp, read-only root, no capabilities, memory-limited")
PY
