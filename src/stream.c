/* stream.c - the refill stream: per-stage queues of rows, a scheduler, and
 * the public ert_stream_* API (exitrt.h).
 *
 * State. Stage s has a ring of rows waiting for it: their input activation
 * (stage 0: the raw input row as submitted; stage s > 0: stage s-1's output),
 * their id, their submit time and their patience state (policy.h: the
 * streak and class of the exits they passed, which a patience exit reads).
 * Rings are FIFO, so within every ring rows keep their submission order. Finished samples wait in a results ring (the
 * sample, its logits, its latency) until polled. Everything is allocated at
 * create:
 *   stage 0 ring        queue rows
 *   stage s > 0 ring    min(queue, 2 * batch) rows
 *   results ring        queue rows (result + K logits)
 *   one stage run       scratch for a wrapped input and a wrapped output, and
 *                       the backend's per-row results, batch rows each
 * `admitted` (queued anywhere + finished and not polled) never exceeds
 * `queue`: submit refuses what would exceed it, so the results ring cannot
 * overflow and the stage 0 ring cannot either.
 *
 * A stage run takes the k = min(count, batch) oldest rows of a ring and hands
 * them to the backend's run_stage (engine_core.h), which computes the stage and
 * its exit for those rows only. The rows that exit go to the results ring in
 * row order; the survivors come back compacted and are appended to the next
 * stage's ring (written there directly when the ring's free space is
 * contiguous, else through a scratch). The ring is popped only after the
 * backend succeeded, so a failed run leaves everything as it was.
 *
 * Scheduling rule, applied after every stage run until nothing is runnable:
 *   1. the deepest stage holding a full batch runs first (a full batch is
 *      `batch` rows, or for a ring smaller than that, a full ring);
 *   2. else, on flush, or when the oldest queued sample was submitted more
 *      than `deadline_ms` ago, the deepest non-empty stage runs a partial
 *      batch;
 *   3. else nothing runs until the next call.
 * Why deepest first: the rows nearest to finishing leave first, which bounds
 * their latency and keeps the later rings small; and it is what makes a later
 * ring of 2 * batch rows enough. When stage s is the deepest full one, stage
 * s+1 holds < batch rows, so the <= batch survivors of s always fit in its
 * 2 * batch ring; and a partial run picks the deepest non-empty stage, whose
 * next ring is empty. The alternative, shallowest first
 * (ERT_SCHEDULE_SHALLOWEST_FIRST, for measurement), skips a full stage whose
 * next ring lacks room; the deepest full stage always has room, so it cannot
 * stall either.
 *
 * Nothing here knows about devices: the rings are host memory and the
 * backend moves rows in and out (the CUDA backend through host staging for
 * now, src/cuda/stage.c).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "abi.h"
#include "engine_core.h"
#include "util.h"

/* Largest queue accepted: keeps every ring size far from overflow. */
#define STREAM_MAX_QUEUE (1 << 24)

typedef struct ring {
    float *act;        /* [cap, row] */
    uint64_t *id;      /* [cap] */
    uint64_t *t_sub;   /* [cap] submit time, ns (CLOCK_MONOTONIC) */
    ert_patience *pst; /* [cap] patience state after the exits passed */
    size_t row;        /* floats per row */
    int cap, head, count;
} ring;

struct ert_stream {
    ert_engine *e;
    ert_stream_config cfg; /* resolved: batch, queue >= 1 */
    uint64_t deadline_ns;  /* UINT64_MAX: never */
    int S, K;
    ring q[ERT_MAX_EXITS];

    ert_stream_result *done; /* results ring [queue] */
    float *done_logits;      /* [queue, K] */
    int done_head, done_count;

    float *in_scratch;     /* [batch, largest stage input] */
    float *out_scratch;    /* [batch, largest stage output] */
    ert_sample *res;       /* [batch] */
    float *logits;         /* [batch, K] */
    unsigned char *exited; /* [batch] */
    ert_patience *state;   /* [batch] the run's rows' patience states */

    int admitted;
    ert_stream_stats stats;
    char err[ERT_ERROR_LEN];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static ert_status stream_fail(ert_stream *s, ert_status st, const char *msg)
{
    snprintf(s->err, sizeof s->err, "%s", msg);
    return st;
}

/* The engine's busy flag, held for the length of one stream call. */
static int stream_enter(ert_stream *s)
{
    if (engine_enter(s->e)) {
        s->err[0] = '\0';
        return 1;
    }
    stream_fail(s, ERT_BUSY, "the engine is running another call");
    return 0;
}

static void stream_leave(ert_stream *s) { engine_leave(s->e); }

/* ---- create / free ------------------------------------------------------- */

ert_stream_config ert_stream_config_default(void)
{
    ert_stream_config c = {
        .struct_size = sizeof(ert_stream_config),
        .batch = 0,
        .queue = 0,
        .deadline_ms = 2.0,
        .schedule = ERT_SCHEDULE_DEEPEST_FIRST,
    };
    return c;
}

/* malloc of count * size bytes (at least 1), NULL on overflow. */
static void *alloc_array(size_t count, size_t size)
{
    size_t bytes;
    if (!size_mul(count ? count : 1, size, &bytes))
        return NULL;
    return malloc(bytes);
}

void ert_stream_free(ert_stream *s)
{
    if (!s)
        return;
    for (int i = 0; i < ERT_MAX_EXITS; i++) {
        free(s->q[i].act);
        free(s->q[i].id);
        free(s->q[i].t_sub);
        free(s->q[i].pst);
    }
    free(s->done);
    free(s->done_logits);
    free(s->in_scratch);
    free(s->out_scratch);
    free(s->res);
    free(s->logits);
    free(s->exited);
    free(s->state);
    free(s);
}

ert_status ert_stream_create(ert_engine *e, const ert_stream_config *cfg, ert_stream **out,
                             ert_error *err)
{
    if (!out)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_stream_create: out is NULL");
    *out = NULL;
    if (!e)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_stream_create: engine is NULL");
    if (!e->ops->run_stage)
        return ert_fail(err, ERT_UNSUPPORTED, "ert_stream_create: the %s backend has no streams",
                        e->ops->name);
    ert_stream_config c = ert_stream_config_default();
    if (cfg) {
        char why[ERT_ERROR_LEN];
        ert_status sized =
            abi_check(&abi_stream_config, cfg->struct_size, "ert_stream_create", why, sizeof why);
        if (sized != ERT_OK)
            return ert_fail(err, sized, "%s", why);
        abi_read(&c, sizeof c, cfg, cfg->struct_size);
    }
    const int max_batch = e->cfg.max_batch;
    if (c.batch == 0)
        c.batch = max_batch;
    if (c.batch < 1 || c.batch > max_batch)
        return ert_fail(err, ERT_INVALID_ARGUMENT,
                        "ert_stream_create: batch %d out of range [1, %d] (the engine's "
                        "max_batch)",
                        c.batch, max_batch);
    if (c.queue == 0) {
        /* room for a partial batch in every stage and a full one more */
        int per = e->plan.num_stages + 1 > 4 ? e->plan.num_stages + 1 : 4;
        c.queue = c.batch <= STREAM_MAX_QUEUE / per ? per * c.batch : STREAM_MAX_QUEUE;
    }
    if (c.queue < 1 || c.queue > STREAM_MAX_QUEUE)
        return ert_fail(err, ERT_INVALID_ARGUMENT,
                        "ert_stream_create: queue %d out of range [1, %d]", c.queue,
                        STREAM_MAX_QUEUE);
    if (isnan(c.deadline_ms))
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_stream_create: deadline_ms is NaN");
    if ((unsigned)c.schedule > ERT_SCHEDULE_SHALLOWEST_FIRST)
        return ert_fail(err, ERT_INVALID_ARGUMENT, "ert_stream_create: unknown schedule %d",
                        (int)c.schedule);

    ert_stream *s = calloc(1, sizeof *s);
    if (!s)
        return ert_fail(err, ERT_OUT_OF_MEMORY, "ert_stream_create: out of memory");
    s->e = e;
    s->cfg = c;
    /* beyond ~584 years in ns: never */
    s->deadline_ns =
        c.deadline_ms < 0 || c.deadline_ms >= 1.8e13 ? UINT64_MAX : (uint64_t)(c.deadline_ms * 1e6);
    s->S = e->plan.num_stages;
    s->K = e->model->num_classes;
    const size_t B = (size_t)c.batch;
    const int later_cap = c.queue < 2 * c.batch ? c.queue : 2 * c.batch;
    size_t max_in = 0, max_out = 0;
    int ok = 1;
    for (int i = 0; i < s->S; i++) {
        ring *r = &s->q[i];
        r->row = shape_size(e->plan.stages[i].in);
        r->cap = i == 0 ? c.queue : later_cap;
        size_t floats;
        ok = ok && size_mul(r->row, (size_t)r->cap, &floats);
        r->act = ok ? alloc_array(floats, sizeof(float)) : NULL;
        r->id = alloc_array((size_t)r->cap, sizeof(uint64_t));
        r->t_sub = alloc_array((size_t)r->cap, sizeof(uint64_t));
        r->pst = alloc_array((size_t)r->cap, sizeof(ert_patience));
        ok = ok && r->act && r->id && r->t_sub && r->pst;
        if (r->row > max_in)
            max_in = r->row;
        if (shape_size(e->plan.stages[i].out) > max_out)
            max_out = shape_size(e->plan.stages[i].out);
    }
    size_t in_floats = 0, out_floats = 0, done_logits = 0;
    ok = ok && size_mul(max_in, B, &in_floats) && size_mul(max_out, B, &out_floats) &&
         size_mul((size_t)c.queue, (size_t)s->K, &done_logits);
    if (ok) {
        s->done = alloc_array((size_t)c.queue, sizeof *s->done);
        s->done_logits = alloc_array(done_logits, sizeof(float));
        s->in_scratch = alloc_array(in_floats, sizeof(float));
        s->out_scratch = alloc_array(out_floats, sizeof(float));
        s->res = alloc_array(B, sizeof *s->res);
        s->logits = alloc_array(B * (size_t)s->K, sizeof(float));
        s->exited = alloc_array(B, 1);
        s->state = alloc_array(B, sizeof(ert_patience));
        ok = s->done && s->done_logits && s->in_scratch && s->out_scratch && s->res && s->logits &&
             s->exited && s->state;
    }
    if (!ok) {
        ert_stream_free(s);
        return ert_fail(err, ERT_OUT_OF_MEMORY,
                        "ert_stream_create: out of memory for queues of %d samples (batch %d)",
                        c.queue, c.batch);
    }
    s->stats.num_stages = s->S;
    s->stats.batch = c.batch;
    s->stats.queue = c.queue;
    *out = s;
    return ERT_OK;
}

/* ---- rings ----------------------------------------------------------------- */

/* Copies k rows starting at ring slot `at` (wrapping) into dst, or back. */
static void ring_read(const ring *r, int at, int k, float *dst)
{
    if (k <= 0) /* nothing to copy; dst may be NULL */
        return;
    int first = r->cap - at < k ? r->cap - at : k;
    memcpy(dst, r->act + (size_t)at * r->row, sizeof(float) * r->row * (size_t)first);
    if (k > first)
        memcpy(dst + (size_t)first * r->row, r->act, sizeof(float) * r->row * (size_t)(k - first));
}

static void ring_write(ring *r, int at, int k, const float *src)
{
    if (k <= 0) /* an empty submit: src may be NULL */
        return;
    int first = r->cap - at < k ? r->cap - at : k;
    memcpy(r->act + (size_t)at * r->row, src, sizeof(float) * r->row * (size_t)first);
    if (k > first)
        memcpy(r->act, src + (size_t)first * r->row, sizeof(float) * r->row * (size_t)(k - first));
}

static int ring_tail(const ring *r) { return (r->head + r->count) % r->cap; }

/* ---- one stage run ----------------------------------------------------------- */

/* Runs stage si on its k oldest rows. */
static ert_status run_stage(ert_stream *s, int si, int k)
{
    ert_engine *e = s->e;
    ring *q = &s->q[si];
    const int last = si == s->S - 1;
    ring *nq = last ? NULL : &s->q[si + 1];

    /* input: in place when the k rows do not wrap */
    const float *in;
    if (q->head + k <= q->cap) {
        in = q->act + (size_t)q->head * q->row;
    } else {
        ring_read(q, q->head, k, s->in_scratch);
        in = s->in_scratch;
    }
    /* output: straight into the next ring when its free space is contiguous */
    int tail = nq ? ring_tail(nq) : 0;
    int direct = nq && tail + k <= nq->cap;
    float *out = direct ? nq->act + (size_t)tail * nq->row : s->out_scratch;

    /* the rows' patience states travel beside them */
    for (int i = 0; i < k; i++)
        s->state[i] = q->pst[(q->head + i) % q->cap];
    uint64_t macs = 0;
    ert_status st =
        e->ops->run_stage(e, si, in, k, out, s->res, s->logits, s->exited, s->state, &macs);
    if (st != ERT_OK)
        return stream_fail(s, st, e->err);
    uint64_t t = now_ns();

    /* check the backend's answer before anything moves */
    int kept = 0;
    for (int i = 0; i < k; i++) {
        if (s->exited[i] > 1 || (last && !s->exited[i]) ||
            (s->exited[i] && s->res[i].exit_index != si)) {
            snprintf(s->err, sizeof s->err, "backend %s: stage %d row %d: exited %d with exit %d",
                     e->ops->name, si, i, s->exited[i], s->res[i].exit_index);
            return ERT_INTERNAL;
        }
        kept += !s->exited[i];
    }
    if (!direct && kept)
        ring_write(nq, tail, kept, s->out_scratch);

    int j = 0;
    for (int i = 0; i < k; i++) {
        int at = (q->head + i) % q->cap;
        if (!s->exited[i]) {
            int to = (tail + j++) % nq->cap;
            nq->id[to] = q->id[at];
            nq->t_sub[to] = q->t_sub[at];
            nq->pst[to] = s->state[i];
            continue;
        }
        int d = (s->done_head + s->done_count) % s->cfg.queue;
        s->done_count++;
        ert_stream_result *r = &s->done[d];
        r->id = q->id[at];
        r->sample = s->res[i];
        r->latency_s = t > q->t_sub[at] ? (double)(t - q->t_sub[at]) * 1e-9 : 0.0;
        memcpy(s->done_logits + (size_t)d * s->K, s->logits + (size_t)i * s->K,
               sizeof(float) * (size_t)s->K);
        s->stats.exit_counts[si]++;
        s->stats.finished++;
    }
    if (nq)
        nq->count += kept;
    q->head = (q->head + k) % q->cap;
    q->count -= k;

    s->stats.stage_rows[si] += (uint64_t)k;
    s->stats.stage_runs[si]++;
    if (k < s->cfg.batch)
        s->stats.stage_partial_runs[si]++;
    s->stats.macs_executed += macs;
    return ERT_OK;
}

/* ---- scheduling ------------------------------------------------------------------ */

static int stage_full(const ert_stream *s, int si)
{
    const ring *r = &s->q[si];
    int need = s->cfg.batch < r->cap ? s->cfg.batch : r->cap;
    return r->count >= need;
}

/* Whether the survivors of k rows of stage si fit into the next ring. */
static int stage_room(const ert_stream *s, int si, int k)
{
    return si == s->S - 1 || s->q[si + 1].cap - s->q[si + 1].count >= k;
}

static int run_size(const ert_stream *s, int si)
{
    return s->q[si].count < s->cfg.batch ? s->q[si].count : s->cfg.batch;
}

/* Rule 1 (stream.c's header): the stage whose full batch runs next, or -1. */
static int pick_full(const ert_stream *s)
{
    int deepest = s->cfg.schedule == ERT_SCHEDULE_DEEPEST_FIRST;
    for (int i = 0; i < s->S; i++) {
        int si = deepest ? s->S - 1 - i : i;
        if (stage_full(s, si) && stage_room(s, si, run_size(s, si)))
            return si;
    }
    return -1;
}

/* Rule 2: the deepest non-empty stage, or -1. */
static int pick_partial(const ert_stream *s)
{
    for (int si = s->S - 1; si >= 0; si--)
        if (s->q[si].count > 0 && stage_room(s, si, run_size(s, si)))
            return si;
    return -1;
}

/* Whether the oldest queued sample is past the deadline. */
static int past_deadline(const ert_stream *s)
{
    if (s->deadline_ns == UINT64_MAX)
        return 0;
    uint64_t oldest = UINT64_MAX;
    for (int si = 0; si < s->S; si++)
        if (s->q[si].count > 0 && s->q[si].t_sub[s->q[si].head] < oldest)
            oldest = s->q[si].t_sub[s->q[si].head];
    if (oldest == UINT64_MAX)
        return 0;
    uint64_t t = now_ns();
    return t >= oldest && t - oldest >= s->deadline_ns;
}

/* Runs stages by the rule until nothing is runnable; drain: flush. */
static ert_status pump(ert_stream *s, int drain)
{
    for (;;) {
        int si = pick_full(s);
        if (si < 0 && (drain || past_deadline(s)))
            si = pick_partial(s);
        if (si < 0)
            return ERT_OK;
        ert_status st = run_stage(s, si, run_size(s, si));
        if (st != ERT_OK)
            return st;
    }
}

/* ---- the API ------------------------------------------------------------------------- */

ert_status ert_stream_submit(ert_stream *s, const float *inputs, int n, const uint64_t *ids)
{
    if (!s)
        return ERT_INVALID_ARGUMENT;
    if (n < 0 || n > s->cfg.queue) {
        snprintf(s->err, sizeof s->err, "submit: n = %d out of range [0, %d] (the queue)", n,
                 s->cfg.queue);
        return ERT_INVALID_ARGUMENT;
    }
    if (n > 0 && !inputs)
        return stream_fail(s, ERT_INVALID_ARGUMENT, "submit: inputs is NULL");
    if (!stream_enter(s))
        return ERT_BUSY;
    if (s->admitted > s->cfg.queue - n) {
        snprintf(s->err, sizeof s->err, "submit: %d samples do not fit: %d of %d admitted", n,
                 s->admitted, s->cfg.queue);
        stream_leave(s);
        return ERT_QUEUE_FULL;
    }
    ring *q = &s->q[0];
    uint64_t t = now_ns();
    int tail = ring_tail(q);
    ring_write(q, tail, n, inputs);
    for (int i = 0; i < n; i++) {
        int at = (tail + i) % q->cap;
        q->id[at] = ids ? ids[i] : s->stats.submitted + (uint64_t)i;
        q->t_sub[at] = t;
        q->pst[at] = ERT_PATIENCE_START;
        const float *x = inputs + (size_t)i * q->row;
        for (size_t j = 0; j < q->row; j++)
            if (!isfinite(x[j])) {
                s->stats.nonfinite_samples++;
                break;
            }
    }
    q->count += n;
    s->admitted += n;
    s->stats.submitted += (uint64_t)n;
    ert_status st = pump(s, 0);
    stream_leave(s);
    return st;
}

ert_status ert_stream_poll(ert_stream *s, ert_stream_result *results, float *logits, int max,
                           int *got)
{
    if (got)
        *got = 0;
    if (!s)
        return ERT_INVALID_ARGUMENT;
    if (!got || max < 0 || (max > 0 && !results))
        return stream_fail(s, ERT_INVALID_ARGUMENT,
                           !got      ? "poll: got is NULL"
                           : max < 0 ? "poll: max < 0"
                                     : "poll: results is NULL");
    if (!stream_enter(s))
        return ERT_BUSY;
    ert_status st = pump(s, 0);
    int n = s->done_count < max ? s->done_count : max;
    for (int i = 0; i < n; i++) {
        int d = (s->done_head + i) % s->cfg.queue;
        results[i] = s->done[d];
        if (logits)
            memcpy(logits + (size_t)i * s->K, s->done_logits + (size_t)d * s->K,
                   sizeof(float) * (size_t)s->K);
    }
    /* what finished before a failed stage run is still handed out */
    s->done_head = (s->done_head + n) % s->cfg.queue;
    s->done_count -= n;
    s->admitted -= n;
    s->stats.polled += (uint64_t)n;
    *got = n;
    stream_leave(s);
    return st;
}

ert_status ert_stream_flush(ert_stream *s)
{
    if (!s)
        return ERT_INVALID_ARGUMENT;
    if (!stream_enter(s))
        return ERT_BUSY;
    ert_status st = pump(s, 1);
    stream_leave(s);
    return st;
}

ert_status ert_stream_get_stats(const ert_stream *s, ert_stream_stats *caller)
{
    char why[ERT_ERROR_LEN];
    if (!caller || abi_check(&abi_stream_stats, caller->struct_size, "ert_stream_get_stats", why,
                             sizeof why) != ERT_OK)
        return ERT_INVALID_ARGUMENT;
    ert_stream_stats st, *out = &st;
    memset(out, 0, sizeof *out);
    if (s) {
        *out = s->stats;
        out->admitted = s->admitted;
        /* the ideal cost of the finished samples: each entered the stages up
           to the one it left at (plan.h), with heads as the engine's mode
           runs them */
        const ert_engine *e = s->e;
        const int full = e->cfg.mode == ERT_MODE_FULL;
        uint64_t entering = 0, ideal = 0;
        for (int si = s->S - 1; si >= 0; si--) {
            entering += s->stats.exit_counts[si];
            uint64_t head = full && si < s->S - 1 ? 0 : e->model->exits[si].head_macs;
            ideal += entering * (e->plan.stages[si].macs + head);
        }
        out->macs_ideal = ideal;
        out->macs_full = s->stats.finished * e->model->macs_full;
    }
    const uint32_t size = caller->struct_size; /* the caller's fields alone */
    memcpy(caller, out, size);
    caller->struct_size = size;
    return s ? ERT_OK : ERT_INVALID_ARGUMENT;
}

const char *ert_stream_error(const ert_stream *s) { return s ? s->err : "stream is NULL"; }
