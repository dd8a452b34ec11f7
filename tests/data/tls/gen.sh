#!/bin/sh
# Regenerates the test PKI used by tests/unit/test_tls.c. The files are
# committed so tests never depend on openssl at run time; rerun this only to
# change them (validity is 100 years so they do not expire under the tests).
set -eu
cd "$(dirname "$0")"
DAYS=36500
ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# The trusted CA for server and client certificates.
ec ca.key
openssl req -x509 -new -key ca.key -sha256 -days $DAYS -subj "/O=Tern Test/CN=Tern Test CA" \
  -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt

# sign NAME SUBJECT EXTFILE-TEXT: NAME.key must exist; writes NAME.crt signed by CA ($CA).
sign() {
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "${CA:-ca}.crt" -CAkey "${CA:-ca}.key" -CAcreateserial \
    -days $DAYS -sha256 -extfile "$1.ext" -out "$1.crt"
  rm -f "$1.csr" "$1.ext"
}
SRV="basicConstraints=CA:false
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth"

# RSA server certificate with two names.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out mail.key
sign mail "/CN=mail.example.test" "$SRV
subjectAltName=DNS:mail.example.test,DNS:example.test"

# EC server certificate with a wildcard name.
ec other.key
sign other "/CN=other.example.org" "$SRV
subjectAltName=DNS:other.example.org,DNS:*.other.example.org"

# No subjectAltName: names come from the CN.
ec cnonly.key
sign cnonly "/CN=cnonly.example.net" "$SRV"

CLI="basicConstraints=CA:false
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
ec client.key
sign client "/O=Example/CN=alice" "$CLI"

# A client certificate from a CA nobody trusts.
ec rogue-ca.key
openssl req -x509 -new -key rogue-ca.key -sha256 -days $DAYS -subj "/CN=Rogue CA" \
  -addext "basicConstraints=critical,CA:true" -addext "keyUsage=critical,keyCertSign" -out rogue-ca.crt
ec rogue-client.key
CA=rogue-ca sign rogue-client "/O=Evil/CN=mallory" "$CLI"
rm -f rogue-ca.key ./*.srl
