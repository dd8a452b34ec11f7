/* tern-passwd: prints the stored form of a password for auth_file or for
 * pasting anywhere a hash is wanted: "{ARGON2ID}$argon2id$..." and, with
 * --scram, the "{SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey" line that
 * lets SCRAM-SHA-256 be offered. Input trusted: none; the password is read
 * from stdin (no echo on a terminal), never from argv where `ps` shows it. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/hash.h"
#include "tools/password.h"

static void usage(FILE *to)
{
    fprintf(to,
            "usage: tern-passwd [--scram] [-i ITERATIONS]\n"
            "Reads a password from stdin and prints its {ARGON2ID} hash; with --scram also\n"
            "the {SCRAM-SHA-256} keys (iterations 4096 unless -i). For auth_file, write\n"
            "  user@domain:{ARGON2ID}...:scram={SCRAM-SHA-256}...\n");
}


int main(int argc, char **argv)
{
    bool scram = false;
    unsigned long iterations = TERN_HASH_SCRAM_DEFAULT_ITERATIONS;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--scram") == 0) {
            scram = true;
        } else if ((strcmp(argv[i], "-i") == 0 || strcmp(argv[i], "--iterations") == 0) &&
                   i + 1 < argc) {
            char *end;
            iterations = strtoul(argv[++i], &end, 10);
            if (*end != '\0' || iterations < 4096 || iterations > TERN_HASH_SCRAM_MAX_ITERATIONS) {
                fprintf(stderr, "tern-passwd: -i takes 4096..%u (RFC 7677 asks at least 4096)\n",
                        TERN_HASH_SCRAM_MAX_ITERATIONS);
                return 2;
            }
            scram = true;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    char pw[TERN_HASH_MAX_PASSWORD + 2], out[TERN_HASH_MAX];
    if (tern_tool_read_password(pw, sizeof(pw)) != 0) {
        fprintf(stderr, "tern-passwd: no password read from stdin\n");
        return 1;
    }
    int rc = 0;
    if (tern_hash_argon2id(pw, strlen(pw), out, sizeof(out)) != 0) {
        fprintf(stderr, "tern-passwd: hashing failed\n");
        rc = 1;
    } else {
        printf("%s\n", out);
    }
    if (rc == 0 && scram) {
        if (tern_hash_scram_sha256(pw, strlen(pw), (uint32_t)iterations, out, sizeof(out)) != 0) {
            fprintf(stderr, "tern-passwd: SCRAM key derivation failed\n");
            rc = 1;
        } else {
            printf("%s\n", out);
        }
    }
    sodium_memzero(pw, sizeof(pw));
    return rc;
}
