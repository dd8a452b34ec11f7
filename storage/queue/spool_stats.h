/* Counters of a tern_spool, for tests, benchmarks and (later) the admin
 * API. Kept out of spool.h so that header stays the session-facing API. */
#ifndef TERN_SPOOL_STATS_H
#define TERN_SPOOL_STATS_H

#include <stdint.h>

#include "storage/queue/spool.h"

typedef struct tern_spool_stats {
    uint64_t batches;          /* group commits written */
    uint64_t fsyncs;           /* fdatasync calls on segments */
    uint64_t messages;         /* messages made durable since open */
    uint64_t completes;        /* COMPLETE records written since open */
    uint64_t failed;           /* submissions that failed */
    uint64_t live;             /* live messages now */
    uint64_t segments;         /* segment files now */
    uint64_t segments_created; /* since open */
    uint64_t segments_deleted; /* since open */
    uint64_t corrupt_records;  /* skipped at open */
    uint64_t torn_tails;       /* truncated (or, read-only, ignored) at open */
    uint64_t replayed;         /* live messages found at open */
    uint32_t current_segment;  /* number of the segment being appended to */
} tern_spool_stats;

void tern_spool_stats_get(tern_spool *s, tern_spool_stats *st_r);

#endif
