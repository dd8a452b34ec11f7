/* JsonExport's job, seen from outside for unit tests: the record is built
 * in two halves (what needs the mail on its loop, then the MIME work and
 * the output on a pool thread); the mailet runs them through
 * tern_mail_call_async, a test runs them in a row on a standalone mail.
 * Input: the mailet's state (from its init) and a mail. */
#ifndef TERN_MAILETS_JSON_EXPORT_H
#define TERN_MAILETS_JSON_EXPORT_H

#include "mailets/mail.h"

typedef struct je_job je_job;

/* On the mail's loop: NULL when out of memory. */
je_job *tern_json_export_job_new(void *state, tern_mail *m);
/* On any thread: finishes the record and writes or posts it. */
void tern_json_export_job_run(je_job *j);
/* NULL on success, else why it failed. */
const char *tern_json_export_job_error(const je_job *j);
/* The record as built so far (whole after run; file mode adds a final
 * newline). */
const uint8_t *tern_json_export_job_record(const je_job *j, size_t *len_r);
void tern_json_export_job_free(je_job *j);

#endif
