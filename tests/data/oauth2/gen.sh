#!/bin/sh
# gen.sh: makes the oauth2 test keys and JWKS files in this directory with
# openssl (3.x). The keys are test-only and committed, so the tests never
# need openssl; run again only to replace them (tokens are signed by
# tests/unit/test_auth_oauth2.c at test time with these private keys).
set -eu
cd "$(dirname "$0")"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.pem 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.pem 2>/dev/null
openssl genpkey -algorithm Ed25519 -out ed25519.pem 2>/dev/null
# A second RSA key that is not in the JWKS: tokens it signs must fail.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa-other.pem 2>/dev/null

# RSA n: the modulus as big-endian bytes; e is 65537 (AQAB).
n=$(openssl rsa -in rsa.pem -noout -modulus 2>/dev/null | sed 's/^Modulus=//' | xxd -r -p | b64url)
# EC: the last 65 bytes of the SubjectPublicKeyInfo DER are 04 || x || y.
openssl pkey -in ec.pem -pubout -outform DER | tail -c 64 > ec.xy
x=$(head -c 32 ec.xy | b64url)
y=$(tail -c 32 ec.xy | b64url)
rm ec.xy
# Ed25519: the last 32 bytes of the public DER are the key; the last 32 of
# the private DER are the seed libsodium signs with.
ed=$(openssl pkey -in ed25519.pem -pubout -outform DER | tail -c 32 | b64url)
openssl pkey -in ed25519.pem -outform DER | tail -c 32 | xxd -p -c 64 > ed25519.seed

cat > jwks.json <<JSON
{"keys": [
  {"kty": "RSA", "kid": "rsa1", "use": "sig", "alg": "RS256", "n": "$n", "e": "AQAB"},
  {"kty": "EC", "kid": "ec1", "crv": "P-256", "x": "$x", "y": "$y"},
  {"kty": "OKP", "kid": "ed1", "crv": "Ed25519", "x": "$ed"},
  {"kty": "oct", "kid": "ignored", "k": "c2VjcmV0"},
  {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}
]}
JSON
# Broken files for the load errors.
printf '{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}\n' > jwks-weak.json
printf '{"keys": [' > jwks-bad.json
printf '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}\n' > jwks-nokeys.json
printf '{"keys": []}\n' > jwks-empty.json

# One RS256 token signed by openssl itself, so the verifier is checked
# against a signer other than the test's own mbedTLS code. exp is
# 2100-01-01; the test verifies it at a fixed time.
h=$(printf '{"alg":"RS256","kid":"rsa1","typ":"JWT"}' | b64url)
p=$(printf '{"iss":"https://idp.example","aud":"tern","sub":"1","email":"Alice@Example.org","iat":1700000000,"exp":4102444800}' | b64url)
s=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -sign rsa.pem | b64url)
printf '%s.%s.%s\n' "$h" "$p" "$s" > token-rs256-openssl.txt
