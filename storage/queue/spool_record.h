/* Internal to storage/queue/: the on-disk format of the spool (segment file
 * header, record header, envelope encoding) and CRC32C. Shared by spool.c,
 * body.c and the tests. Decoders trust nothing: their input is disk data. */
#ifndef TERN_SPOOL_RECORD_H
#define TERN_SPOOL_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/queue/spool.h"

/* Segment file: 16-byte file header, then records back to back.
 *   file header: "TERNSPL\0" | u32 format version | u32 segment number
 *   record:      40-byte header | payload
 * Record header (little-endian):
 *   0  u32 magic  (REC_MAGIC)
 *   4  u8  record format version (1)
 *   5  u8  type (SPOOL_REC_*)
 *   6  u16 flags (0; readers ignore unknown bits)
 *   8  u32 payload length
 *   12 char[16] qid (not NUL-terminated)
 *   28 u32 CRC32C of the payload
 *   32 u32 reserved (0)
 *   36 u32 CRC32C of bytes 0..35
 * The header has its own checksum so a reader can tell a damaged header (the
 * length cannot be trusted: resynchronise on the next valid header) from a
 * damaged payload (skip by length). */
#define SPOOL_FILE_MAGIC "TERNSPL"
#define SPOOL_FILE_HDR_LEN 16
#define SPOOL_FORMAT_VERSION 1u
#define SPOOL_REC_MAGIC 0x52534E54u /* "TNSR" */
#define SPOOL_REC_VERSION 1u
#define SPOOL_REC_HDR_LEN 40
#define SPOOL_QID_CHARS (TERN_QID_LEN - 1)
/* Bounds checked on replay; a submit past them is refused. */
#define SPOOL_MAX_MESSAGE (1ull << 30)
#define SPOOL_MAX_ENVELOPE (16u << 20)
#define SPOOL_MAX_RCPTS 100000u
#define SPOOL_MAX_PAYLOAD (SPOOL_MAX_MESSAGE + SPOOL_MAX_ENVELOPE + 4u)

enum {
    /* payload: u32 envelope length | envelope | message (prefix + body) */
    SPOOL_REC_MESSAGE = 1,
    /* payload: empty; the qid in the header is done */
    SPOOL_REC_COMPLETE = 2,
    /* reserved for per-recipient delivery state (deferred, delivered,
     * failed, next try); current readers skip it */
    SPOOL_REC_RCPT_STATE = 3,
    /* the remote queue's retry state of one recipient, payload:
     *   u32 recipient index (0xffffffff: the message) | u32 attempts |
     *   u64 next try (unix ms) | u8 flags (TERN_QFLAG_*; for the message,
     *   bit 0 = held) | u16 error length | error bytes
     * older readers skip it (unknown type) */
    SPOOL_REC_RCPT_RETRY = 4,
};
#define SPOOL_RETRY_MSG 0xffffffffu
#define SPOOL_RETRY_FIXED 19

typedef struct spool_rec_hdr {
    uint8_t version;
    uint8_t type;
    uint16_t flags;
    uint32_t len;
    char qid[TERN_QID_LEN];
    uint32_t payload_crc;
} spool_rec_hdr;

uint32_t spool_crc32c(uint32_t crc, const void *data, size_t len);
/* CRC of A||B from crc(A), crc(B) and len(B). */
uint32_t spool_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

void spool_file_hdr_encode(uint8_t out[SPOOL_FILE_HDR_LEN], uint32_t seg_num);
/* 0 when the file header is ours (any version <= ours), -1 otherwise. */
int spool_file_hdr_check(const uint8_t *in, size_t len);

void spool_rec_hdr_encode(uint8_t out[SPOOL_REC_HDR_LEN], const spool_rec_hdr *h);
/* 0 when magic and header checksum match and the length is in bounds. */
int spool_rec_hdr_decode(const uint8_t *in, size_t len, spool_rec_hdr *h_r);

/* Envelope encoding: u8 version (1), then fields as tag-length-value,
 * tag u16, length u32. Unknown tags are skipped so a newer writer can add
 * fields. String values are raw bytes (no NUL); an absent optional string
 * is an absent tag. A recipient is one tag whose value is itself a TLV
 * list. Returns a malloc'd blob or NULL (out of memory or over limits). */
uint8_t *spool_env_encode(const tern_envelope *env, size_t *len_r);
/* Parses disk data into a deep-copied envelope (free with spool_env_free).
 * Returns NULL when malformed; *why_r gets a static reason. */
tern_envelope *spool_env_decode(const uint8_t *data, size_t len, const char **why_r);
void spool_env_free(tern_envelope *env);

#endif
