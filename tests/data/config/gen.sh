#!/bin/sh
# Regenerates the test certificates for tests/unit/test_config.c. The PEM
# files are committed so that tests never depend on openssl at run time;
# run this only to replace them (validity is 100 years on purpose).
set -e
cd "$(dirname "$0")"
openssl req -x509 -newkey rsa:2048 -nodes -keyout rsa.key -out rsa.crt -days 36500 \
    -subj "/CN=mail.example.test" -addext "subjectAltName=DNS:mail.example.test,DNS:example.test"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ec.key \
    -out ec.crt -days 36500 -subj "/CN=mx.example.test" -addext "subjectAltName=DNS:mx.example.test"
# A key that belongs to no certificate here: the mismatch case.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out other.key
# A client CA and a client certificate it signed (mTLS); client.crt is also
# the "not a CA" case for client_ca.
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 36500 \
    -subj "/CN=Tern Test Client CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN=client.example.test"
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt \
    -days 36500 -extfile client.ext
rm -f client.csr client.ext ca.srl
# A passphrase-protected key: refused, ternd cannot prompt.
openssl pkey -in rsa.key -aes256 -passout pass:secret -out encrypted.key
printf 'this is not a certificate\n' > garbage.pem
