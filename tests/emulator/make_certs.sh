#!/usr/bin/env bash
# Generate throw-away TLS material for the GitLab emulator tests.
#
#   make_certs.sh DIR
#
# Writes into DIR:
#   ca.pem, ca-key.pem            test CA
#   server.pem, server-key.pem    server certificate signed by the CA
#                                 (subjectAltName IP:127.0.0.1, IP:::1, DNS:localhost)
#   client.pem, client-key.pem    client certificate signed by the CA (mTLS tests)
#   other-ca.pem, other-ca-key.pem an unrelated CA ("wrong CA" tests)
#
# EC P-256 keys keep it fast. Idempotent: if every file exists and the server and client
# certificates still verify against ca.pem, nothing is regenerated. Safe to run concurrently
# on the same DIR (flock).
set -euo pipefail

dir=${1:?usage: make_certs.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

files=(ca.pem ca-key.pem server.pem server-key.pem client.pem client-key.pem other-ca.pem other-ca-key.pem)

complete() {
  local f
  for f in "${files[@]}"; do
    [[ -s "$dir/$f" ]] || return 1
  done
  openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" "$dir/client.pem" >/dev/null 2>&1
}

exec 9>"$dir/.make_certs.lock"
flock 9

if complete; then
  exit 0
fi

work=$(mktemp -d "$dir/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

new_ca() { # name CN
  openssl req -x509 "${ec[@]}" -keyout "$1-key.pem" -out "$1.pem" -days 3650 -sha256 \
    -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
}

new_leaf() { # name CN extfile-content
  openssl req -new "${ec[@]}" -keyout "$1-key.pem" -out "$1.csr" -subj "/CN=$2" 2>/dev/null
  printf '%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem \
    -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}

new_ca ca "kiln test CA"
new_ca other-ca "kiln unrelated test CA"

new_leaf server localhost "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost
authorityKeyIdentifier=keyid"

new_leaf client kiln-test-client "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid"

chmod 600 ./*-key.pem
for f in "${files[@]}"; do
  mv -f "$f" "$dir/$f"
done
