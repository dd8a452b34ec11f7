/* The certificate of last resort: when no configured certificate fits a
 * connection (none configured, or an unknown name with no default), the
 * server still offers TLS with a self-signed certificate made in memory for
 * server.hostname, so STARTTLS keeps working and opportunistic senders (which
 * do not verify) still encrypt. Nothing is written to disk. Input trusted:
 * the hostname from the validated config (still checked: it goes into a DN). */
#include "protocols/common/tls_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/x509_crt.h>

#define SELFSIGNED_VALID_DAYS 365
/* Clients with a slightly slow clock should not see "not yet valid". */
#define SELFSIGNED_BACKDATE_S 3600

char *tls__strdupf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : s;
}

/* The name lands in "CN=<name>", which mbedTLS parses with ',' '=' '\\' as
 * syntax, and in a dNSName, so only hostname characters may pass. */
static int selfsigned__valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '.'))
            return 0;
    }
    return 1;
}

/* mbedTLS 2.28 has no writer for subjectAltName, so the extension value
 * (GeneralNames with one dNSName) is built by hand. asn1write fills the
 * buffer from its end; *der_r points at the first byte. */
static int selfsigned__san(const char *name, unsigned char *buf, size_t size,
                           unsigned char **der_r, size_t *len_r)
{
    unsigned char *p = buf + size;
    size_t nlen = strlen(name);
    size_t len = 0;
    int r;
    if ((r = mbedtls_asn1_write_raw_buffer(&p, buf, (const unsigned char *)name, nlen)) < 0)
        return r;
    len += (size_t)r;
    if ((r = mbedtls_asn1_write_len(&p, buf, nlen)) < 0)
        return r;
    len += (size_t)r;
    if ((r = mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_DNS_NAME)) < 0)
        return r;
    len += (size_t)r;
    if ((r = mbedtls_asn1_write_len(&p, buf, len)) < 0)
        return r;
    len += (size_t)r;
    if ((r = mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)) < 0)
        return r;
    len += (size_t)r;
    *der_r = p;
    *len_r = len;
    return 0;
}

static void selfsigned__time(time_t t, char out[16])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 16, "%Y%m%d%H%M%S", &tm);
}

int tls__selfsigned(const char *hostname, int (*f_rng)(void *, unsigned char *, size_t),
                    void *p_rng, mbedtls_x509_crt *crt, mbedtls_pk_context *key,
                    char **error_r)
{
    const char *name = hostname != NULL && hostname[0] != '\0' ? hostname : "localhost";
    if (!selfsigned__valid_name(name)) {
        *error_r = tls__strdupf("self-signed certificate: server.hostname is not a valid host name");
        return -1;
    }

    mbedtls_x509write_cert w;
    mbedtls_mpi serial;
    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi_init(&serial);
    unsigned char *der = NULL;
    const char *step = "key";
    int r;

    if ((r = mbedtls_pk_setup(key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY))) != 0)
        goto fail;
    if ((r = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*key), f_rng, p_rng)) != 0)
        goto fail;

    step = "certificate";
    /* 16 random bytes, top bit clear: positive and well under the 20-octet
     * cap of RFC 5280 4.1.2.2, unique enough that browsers caching an old
     * self-signed certificate for this host do not complain about reuse. */
    unsigned char sn[16];
    if ((r = f_rng(p_rng, sn, sizeof(sn))) != 0)
        goto fail;
    sn[0] = (unsigned char)((sn[0] & 0x7f) | 0x01);
    if ((r = mbedtls_mpi_read_binary(&serial, sn, sizeof(sn))) != 0)
        goto fail;

    char subject[260];
    snprintf(subject, sizeof(subject), "CN=%s", name);
    time_t now = time(NULL);
    char not_before[16], not_after[16];
    selfsigned__time(now - SELFSIGNED_BACKDATE_S, not_before);
    selfsigned__time(now + (time_t)SELFSIGNED_VALID_DAYS * 86400, not_after);

    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&w, key);
    mbedtls_x509write_crt_set_issuer_key(&w, key);
    if ((r = mbedtls_x509write_crt_set_serial(&w, &serial)) != 0 ||
        (r = mbedtls_x509write_crt_set_subject_name(&w, subject)) != 0 ||
        (r = mbedtls_x509write_crt_set_issuer_name(&w, subject)) != 0 ||
        (r = mbedtls_x509write_crt_set_validity(&w, not_before, not_after)) != 0 ||
        (r = mbedtls_x509write_crt_set_basic_constraints(&w, 0, -1)) != 0 ||
        (r = mbedtls_x509write_crt_set_key_usage(&w, MBEDTLS_X509_KU_DIGITAL_SIGNATURE)) != 0 ||
        (r = mbedtls_x509write_crt_set_subject_key_identifier(&w)) != 0)
        goto fail;

    unsigned char sanbuf[300];
    unsigned char *san;
    size_t san_len;
    if ((r = selfsigned__san(name, sanbuf, sizeof(sanbuf), &san, &san_len)) != 0)
        goto fail;
    if ((r = mbedtls_x509write_crt_set_extension(&w, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                                 MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0,
                                                 san, san_len)) != 0)
        goto fail;

    const size_t der_size = 4096;
    der = malloc(der_size);
    if (der == NULL) {
        r = MBEDTLS_ERR_X509_ALLOC_FAILED;
        goto fail;
    }
    r = mbedtls_x509write_crt_der(&w, der, der_size, f_rng, p_rng);
    if (r < 0)
        goto fail;
    /* The DER is written at the end of the buffer. */
    size_t len = (size_t)r;
    if ((r = mbedtls_x509_crt_parse_der(crt, der + der_size - len, len)) != 0)
        goto fail;

    free(der);
    mbedtls_mpi_free(&serial);
    mbedtls_x509write_crt_free(&w);
    return 0;

fail:;
    char msg[128];
    mbedtls_strerror(r, msg, sizeof(msg));
    *error_r = tls__strdupf("self-signed certificate: %s: %s", step, msg);
    free(der);
    mbedtls_mpi_free(&serial);
    mbedtls_x509write_crt_free(&w);
    return -1;
}
