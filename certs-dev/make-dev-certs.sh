#!/usr/bin/env bash
# DEVELOPMENT ONLY. Makes a throwaway CA, a server certificate (localhost,
# 127.0.0.1, ::1) and a client certificate for local experiments: a TLS check
# against a test server, a TLS SMTP sink for notification tests by hand, an mTLS
# client. Nothing in portwatch reads these files unless you pass them on a
# command line; the collector makes its own CA and agents their own keys.
#
#   bash certs-dev/make-dev-certs.sh [DIR]     # DIR defaults to certs-dev/
#
# Writes DIR/dev-ca.{pem,key}, dev-server.{pem,key}, dev-client.{pem,key}:
# ECDSA P-256, valid 30 days, keys 0600, each file starting with a DEVELOPMENT
# ONLY line (PEM readers skip text before the BEGIN line). Run it again to
# replace them. git ignores them; .dockerignore keeps them out of images.
set -euo pipefail

dir=${1:-"$(dirname "$0")"}
days=30
mkdir -p "$dir"
cd "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

banner="# DEVELOPMENT ONLY (portwatch certs-dev/make-dev-certs.sh): never use in production"
# mark FILE: put the banner first.
mark() {
    { echo "$banner"; cat "$1"; } >"$work/marked"
    mv "$work/marked" "$1"
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/O=portwatch DEVELOPMENT ONLY/CN=portwatch dev CA (DEVELOPMENT ONLY)" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout dev-ca.key -out dev-ca.pem 2>/dev/null

# leaf NAME CN EXTENSIONS
leaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/O=portwatch DEVELOPMENT ONLY/CN=$2" \
        -keyout "dev-$1.key" -out "$work/$1.csr" 2>/dev/null
    printf '%b' "$3" >"$work/$1.ext"
    openssl x509 -req -in "$work/$1.csr" -CA dev-ca.pem -CAkey dev-ca.key \
        -CAcreateserial -CAserial "$work/ca.srl" -days "$days" \
        -extfile "$work/$1.ext" -out "dev-$1.pem" 2>/dev/null
}
leaf server localhost \
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
leaf client "portwatch dev client (DEVELOPMENT ONLY)" \
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=URI:portwatch://dev/client\n"

for f in dev-ca.pem dev-ca.key dev-server.pem dev-server.key dev-client.pem dev-client.key; do
    mark "$f"
done
chmod 0600 dev-*.key
chmod 0644 dev-*.pem
openssl verify -CAfile dev-ca.pem dev-server.pem dev-client.pem >/dev/null

echo "DEVELOPMENT ONLY certificates in $PWD (valid $days days):"
ls -l dev-ca.pem dev-ca.key dev-server.pem dev-server.key dev-client.pem dev-client.key
