/* test_patience.c - the patience policy (PABEE) end to end on the backend
 * under test (backend_test.h): FULL, MASKED, COMPACTED at several batch
 * sizes, the refill stream, and ert_engine_exit_outputs, against a naive
 * reference.
 *
 * The reference: every exit's logits as the MASKED engine computes them
 * (each exit forced in turn: the exits before it never fire, it always
 * does, so a row that still goes on had non-finite logits there), then per
 * sample a plain walk over the exits (mw_walk_exits: argmax, streak,
 * decision; written apart from policy.h's packed state). Where the engine
 * says its modes agree bit for bit (tb_exact), every mode must give every
 * sample the reference's exit, class and score exactly; elsewhere (CUDA) a
 * difference must be explained by a near tie of the top two logits or an
 * entropy score near its threshold on the sample's path, and be rare.
 *
 * Models: the random ones (model_writer.h) with their exits' policies
 * rewritten: patience after an entropy exit, patience before one, patience
 * only; rows with NaN and infinite inputs; tied classes; an exit whose
 * logits are all NaN (the streak breaks there). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_test.h"
#include "model.h"
#include "policy.h"
#include "tolerance.h"

#define N 100
#define NAN_ROW 3
#define INF_ROW 17
#define NEVER_K 16.0f      /* no streak reaches it: a model has at most 16 exits */
#define ALWAYS_ENT 3.0e38f /* every finite entropy is below it */

static const int batches[] = {1, 7, 64, N};

typedef struct pfix {
    ert_model *m;
    ert_engine *es[3]; /* FULL, MASKED, COMPACTED */
    int E, K;
    size_t per;
    float *x;           /* [N, per] */
    float *z;           /* [N, E, K] every exit's logits (MASKED); NaN where not finite */
    unsigned char *fin; /* [N, E] the logits at that exit are finite */
} pfix;

static void set_all(pfix *f, const float *thr)
{
    for (int x = 0; x < 3; x++)
        for (int i = 0; i < f->E - 1; i++)
            cr_assert_eq(ert_engine_set_threshold(f->es[x], i, thr[i]), ERT_OK, "exit %d: %s", i,
                         ert_engine_error(f->es[x]));
}

/* Every exit's logits from MASKED with exit j forced, j = 0 .. E-1. */
static void fill_logits(pfix *f)
{
    const int E = f->E, K = f->K;
    tb_result t;
    tb_result_init(&t, N, K);
    float thr[ERT_MAX_EXITS];
    for (int j = 0; j < E; j++) {
        for (int i = 0; i < E - 1; i++) {
            ert_policy_kind p = ert_model_exit_policy(f->m, i);
            cr_assert(p == ERT_POLICY_ENTROPY || p == ERT_POLICY_PATIENCE,
                      "the forcing needs policies that can be made never to fire");
            int ent = p == ERT_POLICY_ENTROPY;
            thr[i] = i < j ? (ent ? 0.0f : NEVER_K) : (ent ? ALWAYS_ENT : 1.0f);
        }
        for (int i = 0; i < E - 1; i++)
            cr_assert_eq(ert_engine_set_threshold(f->es[1], i, thr[i]), ERT_OK);
        tb_infer(f->es[1], f->x, N, &t);
        for (int r = 0; r < N; r++) {
            const ert_sample *s = &t.samples[r];
            cr_assert_geq(s->exit_index, j, "row %d left at %d before the forced exit %d", r,
                          s->exit_index, j);
            float *dst = f->z + ((size_t)r * E + j) * K;
            int here = s->exit_index == j;
            for (int k = 0; k < K; k++)
                dst[k] = here ? t.logits[(size_t)r * K + k] : NAN;
            int finite = here;
            for (int k = 0; k < K; k++)
                finite &= isfinite(dst[k]) != 0;
            f->fin[(size_t)r * E + j] = (unsigned char)finite;
        }
    }
    tb_result_free(&t);
}

/* (Re)creates the engines (after a change to the model's weights) and the
 * reference logits. */
static void pfix_engines(pfix *f)
{
    for (int x = 0; x < 3; x++)
        ert_engine_free(f->es[x]);
    f->es[0] = tb_engine(f->m, ERT_MODE_FULL, N);
    f->es[1] = tb_engine(f->m, ERT_MODE_MASKED, N);
    f->es[2] = tb_engine(f->m, ERT_MODE_COMPACTED, N);
    fill_logits(f);
}

static void pfix_open(pfix *f, ert_model *m, uint64_t seed)
{
    memset(f, 0, sizeof *f);
    f->m = m;
    f->E = ert_model_num_exits(m);
    f->K = ert_model_num_classes(m);
    f->per = ert_model_input_size(m);
    f->x = malloc(sizeof(float) * f->per * N);
    f->z = malloc(sizeof(float) * (size_t)N * f->E * f->K);
    f->fin = malloc((size_t)N * f->E);
    cr_assert(f->x && f->z && f->fin);
    mw_model_inputs(m, f->x, N, seed);
    if (m->input_tokens > 0) {
        /* token 0 is attended in every row (mw_random_tokens): an id that
           is NaN or infinite there makes the row's logits NaN */
        f->x[NAN_ROW * f->per] = NAN;
        f->x[INF_ROW * f->per] = INFINITY;
    } else {
        f->x[NAN_ROW * f->per + 2] = NAN;
        f->x[INF_ROW * f->per + f->per / 2] = INFINITY;
    }
    pfix_engines(f);
}

static void pfix_close(pfix *f)
{
    for (int x = 0; x < 3; x++)
        ert_engine_free(f->es[x]);
    ert_model_free(f->m);
    free(f->x);
    free(f->z);
    free(f->fin);
}

/* The reference for every row with thresholds thr: exits, classes and
 * scores (scores / classes [N, E], or NULL). */
static void reference(const pfix *f, const float *thr, ert_sample *ref, float *scores,
                      int32_t *classes)
{
    for (int r = 0; r < N; r++)
        mw_walk_exits(f->m, thr, f->z + (size_t)r * f->E * f->K, NULL, &ref[r],
                      scores ? scores + (size_t)r * f->E : NULL,
                      classes ? classes + (size_t)r * f->E : NULL);
}

/* Whether rounding can explain a different outcome for row r up to exit
 * `upto`: a near tie at some exit (a class, so a streak, may differ) or an
 * entropy score near its threshold. */
static int explainable(const pfix *f, const float *thr, int r, int upto)
{
    for (int e = 0; e <= upto && e < f->E; e++) {
        if (!f->fin[(size_t)r * f->E + e])
            continue;
        const float *z = f->z + ((size_t)r * f->E + e) * f->K;
        if (fx_near_tie(z, f->K))
            return 1;
        if (e < f->E - 1 && ert_model_exit_policy(f->m, e) == ERT_POLICY_ENTROPY &&
            tol_near_threshold(ert_policy_score(ERT_POLICY_ENTROPY, z, f->K, 0.0f), thr[e]))
            return 1;
    }
    return 0;
}

static int same_sample(const ert_sample *a, const ert_sample *b)
{
    return a->exit_index == b->exit_index && a->predicted == b->predicted &&
           memcmp(&a->score, &b->score, sizeof(float)) == 0;
}

/* got[rows] against the reference: exactly where the engine says its modes
 * agree bit for bit, else up to explained, rare differences. skip: a row
 * not compared (-1: none). */
static void check(const pfix *f, const ert_engine *e, const float *thr, const ert_sample *got,
                  const ert_sample *ref, int skip, const char *what)
{
    int flips = 0;
    for (int r = 0; r < N; r++) {
        if (r == skip)
            continue;
        const ert_sample *g = &got[r], *w = &ref[r];
        if (tb_exact(e)) {
            cr_assert(same_sample(g, w),
                      "%s: row %d: exit %d class %d score %.9g, reference exit %d class %d "
                      "score %.9g",
                      what, r, g->exit_index, g->predicted, g->score, w->exit_index, w->predicted,
                      w->score);
            continue;
        }
        if (g->exit_index == w->exit_index && g->predicted == w->predicted &&
            (ert_model_exit_policy(f->m, w->exit_index) == ERT_POLICY_PATIENCE &&
                     w->exit_index < f->E - 1
                 ? g->score == w->score
                 : tol_score_ok(g->score, w->score)))
            continue;
        int upto = g->exit_index > w->exit_index ? g->exit_index : w->exit_index;
        cr_assert(explainable(f, thr, r, upto),
                  "%s: row %d: exit %d class %d score %.9g, reference exit %d class %d score %.9g",
                  what, r, g->exit_index, g->predicted, g->score, w->exit_index, w->predicted,
                  w->score);
        flips++;
    }
    cr_assert(tol_flips_ok(flips, N), "%s: %d rows differ", what, flips);
}

/* The refill stream on engine e: every row but `skip`, one by one. */
static void stream_run(const pfix *f, ert_engine *e, ert_sample *got, int skip)
{
    ert_stream_config cfg = ert_stream_config_default();
    cfg.batch = 8;
    cfg.deadline_ms = -1.0;
    ert_stream *s = NULL;
    ert_error err = {{0}};
    cr_assert_eq(ert_stream_create(e, &cfg, &s, &err), ERT_OK, "%s", err.msg);
    ert_stream_result res[64];
    unsigned char seen[N] = {0};
    int count = 0, n = 0;
    for (int r = 0; r <= N; r++) {
        if (r == skip)
            continue;
        if (r == N) {
            cr_assert_eq(ert_stream_flush(s), ERT_OK, "%s", ert_stream_error(s));
            break;
        }
        ert_status st;
        uint64_t id = (uint64_t)r;
        while ((st = ert_stream_submit(s, f->x + (size_t)r * f->per, 1, &id)) == ERT_QUEUE_FULL) {
            cr_assert_eq(ert_stream_poll(s, res, NULL, 64, &n), ERT_OK, "%s", ert_stream_error(s));
            if (n == 0)
                cr_assert_eq(ert_stream_flush(s), ERT_OK, "%s", ert_stream_error(s));
            for (int i = 0; i < n; i++, count++) {
                cr_assert(res[i].id < N && !seen[res[i].id]);
                seen[res[i].id] = 1;
                got[res[i].id] = res[i].sample;
            }
        }
        cr_assert_eq(st, ERT_OK, "%s", ert_stream_error(s));
    }
    do {
        cr_assert_eq(ert_stream_poll(s, res, NULL, 64, &n), ERT_OK, "%s", ert_stream_error(s));
        for (int i = 0; i < n; i++, count++) {
            cr_assert(res[i].id < N && !seen[res[i].id]);
            seen[res[i].id] = 1;
            got[res[i].id] = res[i].sample;
        }
    } while (n > 0);
    cr_assert_eq(count, skip >= 0 ? N - 1 : N, "%d samples came back", count);
    ert_stream_free(s);
}

/* The COMPACTED engine's samples for all N rows, with its thresholds as
 * set. */
static void compacted_samples(const pfix *f, ert_sample *got)
{
    tb_result t;
    tb_result_init(&t, N, f->K);
    tb_infer(f->es[2], f->x, N, &t);
    memcpy(got, t.samples, sizeof(ert_sample) * N);
    tb_result_free(&t);
}

/* Every mode with thresholds thr against the reference; returns the
 * reference's exit counts in counts (when not NULL). */
static void all_modes(pfix *f, const float *thr, int32_t *counts)
{
    const int E = f->E, K = f->K;
    ert_sample ref[N], got[N];
    set_all(f, thr);
    reference(f, thr, ref, NULL, NULL);
    if (counts) {
        memset(counts, 0, sizeof(int32_t) * ERT_MAX_EXITS);
        for (int r = 0; r < N; r++)
            counts[ref[r].exit_index]++;
    }
    /* the reference's own promises: patience scores are streaks >= k, the
     * non-finite rows never leave early */
    for (int r = 0; r < N; r++) {
        int x = ref[r].exit_index;
        if (x < E - 1 && ert_model_exit_policy(f->m, x) == ERT_POLICY_PATIENCE)
            cr_assert(ref[r].score >= thr[x] && ref[r].score == floorf(ref[r].score) &&
                          ref[r].score <= (float)(x + 1),
                      "row %d: streak %g at exit %d, k %g", r, ref[r].score, x, thr[x]);
    }
    cr_assert_eq(ref[NAN_ROW].exit_index, E - 1);

    tb_result t;
    tb_result_init(&t, N, K);
    /* FULL: the final head for everyone */
    tb_infer(f->es[0], f->x, N, &t);
    for (int r = 0; r < N; r++) {
        cr_assert_eq(t.samples[r].exit_index, E - 1);
        const float *zf = f->z + ((size_t)r * E + E - 1) * K;
        cr_assert(t.samples[r].predicted == ert_argmax(zf, K) || fx_near_tie(zf, K),
                  "FULL: row %d: class %d", r, t.samples[r].predicted);
    }
    /* MASKED */
    tb_infer(f->es[1], f->x, N, &t);
    check(f, f->es[1], thr, t.samples, ref, -1, "MASKED");
    /* COMPACTED, the rows cut into batches of every size */
    for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
        char what[64];
        snprintf(what, sizeof what, "COMPACTED batch %d", batches[b]);
        for (int off = 0; off < N; off += batches[b]) {
            int n = N - off < batches[b] ? N - off : batches[b];
            tb_infer(f->es[2], f->x + (size_t)off * f->per, n, &t);
            memcpy(got + off, t.samples, sizeof(ert_sample) * (size_t)n);
        }
        check(f, f->es[2], thr, got, ref, -1, what);
    }
    /* the refill stream, on the MASKED and the COMPACTED engine. The row
     * with an infinity stays out: the stream picks the CPU path per stage
     * (cpu_backend.c, "the two paths"), so where its infinities vanish its
     * logits may round otherwise than in one call. */
    for (int x = 1; x <= 2; x++) {
        stream_run(f, f->es[x], got, INF_ROW);
        check(f, f->es[x], thr, got, ref, INF_ROW,
              x == 1 ? "stream (MASKED engine)" : "stream (COMPACTED engine)");
    }
    tb_result_free(&t);
}

/* ---- sweeps over thresholds --------------------------------------------------------- */

/* The last linear layer of a layer list (a head), or NULL. */
static layer *last_linear(layer_list *l)
{
    for (int i = l->count - 1; i >= 0; i--)
        if (l->items[i].kind == LAYER_LINEAR)
            return &l->items[i];
    return NULL;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Raises class 0's bias in every head (the model's own weight block) until
 * it wins at about half the rows there, then remakes the engines. The
 * random heads each lean to a class of their own whatever the input, so
 * their classes would hardly ever agree and streaks would stay at 1; now
 * each exit splits its rows between class 0 and its own favourite, and
 * streaks of every length occur. */
static void favour_class0(pfix *f)
{
    float d[N];
    for (int e = 0; e < f->E; e++) {
        int n = 0;
        for (int r = 0; r < N; r++) {
            if (!f->fin[(size_t)r * f->E + e])
                continue;
            const float *z = f->z + ((size_t)r * f->E + e) * f->K;
            float top = -INFINITY;
            for (int k = 1; k < f->K; k++)
                top = fmaxf(top, z[k]);
            d[n++] = top - z[0];
        }
        cr_assert_gt(n, 0);
        qsort(d, (size_t)n, sizeof *d, cmp_float);
        layer *l = last_linear(&f->m->exits[e].head);
        cr_assert(l && l->p.linear.bias);
        ((float *)l->p.linear.bias)[0] += d[n / 2];
    }
    pfix_engines(f);
}

/* An entropy threshold letting out about `share` of the finite rows at
 * exit e, from the reference logits. */
static float entropy_share(const pfix *f, int e, float share)
{
    float v[N];
    int n = 0;
    for (int r = 0; r < N; r++)
        if (f->fin[(size_t)r * f->E + e])
            v[n++] = ert_policy_score(ERT_POLICY_ENTROPY, f->z + ((size_t)r * f->E + e) * f->K,
                                      f->K, 0.0f);
    for (int i = 1; i < n; i++) /* insertion sort: n <= 100 */
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            float t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    int k = (int)(share * (float)n);
    return k <= 0 ? 0.0f : k >= n ? ALWAYS_ENT : 0.5f * (v[k - 1] + v[k]);
}

/* The resnet's three early exits as entropy, patience, patience: every
 * combination of k over {1, 2, 3} at exit 1 (3: beyond its position) and
 * {1, 2, 3, 4} at exit 2, the entropy exit never, sometimes, always. */
Test(patience, after_entropy_all_modes)
{
    const char *types[] = {"entropy", "patience", "patience"};
    const double thr0[] = {1.0, 2.0, 2.0};
    pfix f;
    pfix_open(&f, fx_policy_model(61, MW_RESNET, types, thr0, 3), 610);
    favour_class0(&f);
    const float ent[] = {0.0f, entropy_share(&f, 0, 0.3f), ALWAYS_ENT};
    int early_patience = 0;
    for (int a = 0; a < 3; a++)
        for (int k1 = 1; k1 <= 3; k1++)
            for (int k2 = 1; k2 <= 4; k2++) {
                if (a == 2 && (k1 > 1 || k2 > 1))
                    continue; /* everybody finite leaves at exit 0 anyway */
                float thr[3] = {ent[a], (float)k1, (float)k2};
                int32_t counts[ERT_MAX_EXITS];
                all_modes(&f, thr, counts);
                if (k1 == 3)
                    cr_assert_eq(counts[1], 0, "k = 3 fired at exit 1");
                if (k2 == 4)
                    cr_assert_eq(counts[2], 0, "k = 4 fired at exit 2");
                early_patience += counts[1] + counts[2];
            }
    cr_assert_gt(early_patience, 0, "no sample ever left at a patience exit");
    pfix_close(&f);
}

/* Patience first, then entropy, then patience: the streak runs through the
 * entropy exit. */
Test(patience, around_entropy_all_modes)
{
    const char *types[] = {"patience", "entropy", "patience"};
    const double thr0[] = {1.0, 1.0, 2.0};
    pfix f;
    pfix_open(&f, fx_policy_model(62, MW_RESNET, types, thr0, 3), 620);
    favour_class0(&f);
    const float ent[] = {0.0f, entropy_share(&f, 1, 0.3f)};
    for (int a = 0; a < 2; a++)
        for (int k2 = 1; k2 <= 3; k2++) {
            float thr[3] = {NEVER_K, ent[a], (float)k2};
            all_modes(&f, thr, NULL);
        }
    pfix_close(&f);
}

/* A token model (model_writer.h's BERT-like random model: post-LN blocks,
 * pooler heads): patience, entropy, patience over its three early exits;
 * the streak runs through the entropy exit, and the rows with an invalid
 * id (NaN logits) never leave early. */
Test(patience, bert_all_modes)
{
    const char *types[] = {"patience", "entropy", "patience"};
    const double thr0[] = {1.0, 1.0, 2.0};
    pfix f;
    pfix_open(&f, fx_policy_model(64, MW_BERT, types, thr0, 3), 640);
    cr_assert_gt(ert_model_input_tokens(f.m), 0);
    favour_class0(&f);
    for (int e = 0; e < f.E; e++) {
        cr_assert_eq(f.fin[(size_t)NAN_ROW * f.E + e], 0, "exit %d: the NaN id's logits", e);
        cr_assert_eq(f.fin[(size_t)INF_ROW * f.E + e], 0, "exit %d: the infinite id's logits", e);
    }
    const float ent[] = {0.0f, entropy_share(&f, 1, 0.3f)};
    int early_patience = 0;
    for (int a = 0; a < 2; a++)
        for (int k0 = 1; k0 <= 2; k0++)
            for (int k2 = 1; k2 <= 3; k2++) {
                float thr[3] = {k0 == 1 ? NEVER_K : 1.0f, ent[a], (float)k2};
                int32_t counts[ERT_MAX_EXITS];
                all_modes(&f, thr, counts);
                early_patience += counts[0] + counts[2];
            }
    cr_assert_gt(early_patience, 0, "no sample ever left at a patience exit");
    pfix_close(&f);
}

/* k = 1 at the first exit: every row with finite logits leaves there with
 * score 1; the rows with a NaN or an infinity in their input do not. */
Test(patience, k1_at_the_first_exit)
{
    const char *types[] = {"patience", "patience"};
    const double thr0[] = {1.0, 2.0};
    pfix f;
    pfix_open(&f, fx_policy_model(63, MW_MLP, types, thr0, 2), 630);
    float thr[2] = {1.0f, 2.0f};
    int32_t counts[ERT_MAX_EXITS];
    all_modes(&f, thr, counts);
    int finite0 = 0;
    for (int r = 0; r < N; r++)
        finite0 += f.fin[(size_t)r * f.E];
    cr_assert_eq(counts[0], finite0);
    cr_assert_geq(finite0, N - 2);
    ert_sample got[N];
    compacted_samples(&f, got);
    for (int r = 0; r < N; r++) {
        if (!f.fin[(size_t)r * f.E])
            continue;
        cr_assert_eq(got[r].exit_index, 0);
        cr_assert_eq(got[r].score, 1.0f, "row %d: score %g", r, got[r].score);
    }
    cr_assert_eq(got[NAN_ROW].exit_index, f.E - 1);
    /* k = 2 at exit 1 after k = 16 at exit 0 */
    thr[0] = NEVER_K;
    all_modes(&f, thr, counts);
    cr_assert_eq(counts[0], 0);
    pfix_close(&f);
}

/* ---- ties, and a streak broken by non-finite logits -------------------------------- */

/* Classes 0 and 1 get the same weights and bias in every head (class 0
 * favoured first, so the pair is often on top): their logits tie exactly,
 * and the lower index must win everywhere. */
Test(patience, ties)
{
    const char *types[] = {"entropy", "patience", "patience"};
    const double thr0[] = {0.0, 2.0, 2.0};
    pfix f;
    pfix_open(&f, fx_policy_model(64, MW_RESNET, types, thr0, 3), 640);
    favour_class0(&f);
    for (int e = 0; e < f.E; e++) {
        linear_params *p = &last_linear(&f.m->exits[e].head)->p.linear;
        float *w = (float *)p->weight, *b = (float *)p->bias; /* the model's own block */
        memcpy(w + p->in_features, w, sizeof(float) * (size_t)p->in_features);
        b[1] = b[0];
    }
    pfix_engines(&f);
    int ties = 0;
    for (int r = 0; r < N; r++)
        for (int e = 0; e < f.E; e++) {
            const float *z = f.z + ((size_t)r * f.E + e) * f.K;
            if (f.fin[(size_t)r * f.E + e] && z[0] == z[1] && ert_argmax(z, f.K) == 0)
                ties++;
        }
    if (ERT_TEST_BACKEND == ERT_BACKEND_CPU)
        cr_assert_gt(ties, 0, "no row had its top two classes tied");
    for (int k1 = 1; k1 <= 2; k1++)
        for (int k2 = 1; k2 <= 3; k2++) {
            float thr[3] = {0.0f, (float)k1, (float)k2};
            all_modes(&f, thr, NULL);
        }
    /* class 1 is never predicted where it ties class 0 (in the COMPACTED
       engine's own logits: exactly these where its modes agree bit for bit) */
    int32_t *cl = malloc(sizeof(int32_t) * (size_t)N * f.E);
    cr_assert_not_null(cl);
    cr_assert_eq(ert_engine_exit_outputs(f.es[2], f.x, N, NULL, cl), ERT_OK);
    for (int r = 0; r < N; r++)
        for (int e = 0; e < f.E; e++) {
            const float *z = f.z + ((size_t)r * f.E + e) * f.K;
            if (tb_exact(f.es[2]) && f.fin[(size_t)r * f.E + e] && z[0] == z[1])
                cr_assert_neq(cl[(size_t)r * f.E + e], 1, "row %d exit %d: tie went to 1", r, e);
        }
    free(cl);
    pfix_close(&f);
}

/* Exit 1's logits are NaN for every row (a NaN bias): it never fires, and
 * the streak starts again at exit 2, so k = 2 there never fires either and
 * k = 1 takes every finite row with score 1. */
Test(patience, nonfinite_exit_breaks_the_streak)
{
    const char *types[] = {"patience", "patience", "patience"};
    const double thr0[] = {1.0, 1.0, 2.0};
    ert_model *m = fx_policy_model(65, MW_RESNET, types, thr0, 3);
    layer *l = last_linear(&m->exits[1].head);
    cr_assert(l && l->p.linear.bias);
    ((float *)l->p.linear.bias)[3] = NAN;
    pfix f;
    pfix_open(&f, m, 650);
    for (int r = 0; r < N; r++)
        cr_assert_eq(f.fin[(size_t)r * f.E + 1], 0, "row %d: exit 1 finite", r);
    int32_t counts[ERT_MAX_EXITS];
    float thr[3] = {NEVER_K, 1.0f, 2.0f};
    all_modes(&f, thr, counts);
    cr_assert_eq(counts[1], 0);
    cr_assert_eq(counts[2], 0, "a streak survived the NaN exit");
    thr[2] = 1.0f;
    all_modes(&f, thr, counts);
    cr_assert_eq(counts[1], 0);
    cr_assert_geq(counts[2], N - 2);
    ert_sample got[N];
    compacted_samples(&f, got);
    for (int r = 0; r < N; r++)
        if (got[r].exit_index == 2)
            cr_assert_eq(got[r].score, 1.0f);
    /* exit_outputs: the streak is NaN at the NaN exit, 1 after it */
    float *sc = malloc(sizeof(float) * (size_t)N * f.E);
    cr_assert_not_null(sc);
    cr_assert_eq(ert_engine_exit_outputs(f.es[0], f.x, N, sc, NULL), ERT_OK, "%s",
                 ert_engine_error(f.es[0]));
    for (int r = 0; r < N; r++) {
        cr_assert(isnan(sc[(size_t)r * f.E + 1]));
        if (f.fin[(size_t)r * f.E + 2])
            cr_assert_eq(sc[(size_t)r * f.E + 2], 1.0f);
    }
    free(sc);
    pfix_close(&f);
}

/* ---- every exit's outputs ---------------------------------------------------------- */

/* ert_engine_exit_outputs on each mode's engine: a patience exit's score is
 * the streak computed in exit order (NaN where the logits are not finite),
 * every class the argmax at that exit; the reference's, exactly on the CPU. */
Test(patience, exit_outputs)
{
    const char *types[] = {"entropy", "patience", "patience"};
    const double thr0[] = {1.0, 2.0, 3.0};
    pfix f;
    pfix_open(&f, fx_policy_model(66, MW_RESNET, types, thr0, 3), 660);
    favour_class0(&f);
    const size_t cells = (size_t)N * f.E;
    float *sc = malloc(sizeof(float) * cells), *rsc = malloc(sizeof(float) * cells);
    int32_t *cl = malloc(sizeof(int32_t) * cells), *rcl = malloc(sizeof(int32_t) * cells);
    ert_sample ref[N];
    cr_assert(sc && rsc && cl && rcl);
    float thr[3] = {1.0f, 2.0f, 3.0f};
    reference(&f, thr, ref, rsc, rcl);
    int streaks[ERT_MAX_EXITS + 1] = {0};
    for (int x = 0; x < 3; x++) {
        cr_assert_eq(ert_engine_exit_outputs(f.es[x], f.x, N, sc, cl), ERT_OK, "%s",
                     ert_engine_error(f.es[x]));
        for (int r = 0; r < N; r++)
            for (int e = 0; e < f.E; e++) {
                size_t at = (size_t)r * f.E + e;
                int patience = e < f.E - 1 && ert_model_exit_policy(f.m, e) == ERT_POLICY_PATIENCE;
                if (!f.fin[at]) {
                    cr_assert(isnan(sc[at]), "row %d exit %d: score %g for NaN logits", r, e,
                              sc[at]);
                    continue;
                }
                if (patience && x == 0)
                    streaks[(int)sc[at]]++;
                if (ERT_TEST_BACKEND == ERT_BACKEND_CPU || !explainable(&f, thr, r, e)) {
                    cr_assert_eq(cl[at], rcl[at], "row %d exit %d: class %d, reference %d", r, e,
                                 cl[at], rcl[at]);
                    if (patience)
                        cr_assert_eq(sc[at], rsc[at], "row %d exit %d: streak %g, reference %g", r,
                                     e, sc[at], rsc[at]);
                    else if (ERT_TEST_BACKEND == ERT_BACKEND_CPU)
                        cr_assert(memcmp(&sc[at], &rsc[at], sizeof(float)) == 0);
                    else
                        cr_assert(tol_score_ok(sc[at], rsc[at]));
                }
            }
    }
    /* the sample's own score where it leaves at a patience exit */
    ert_sample got[N];
    set_all(&f, thr);
    compacted_samples(&f, got);
    cr_assert_eq(ert_engine_exit_outputs(f.es[2], f.x, N, sc, NULL), ERT_OK);
    for (int r = 0; r < N; r++) {
        int x = got[r].exit_index;
        if (x >= 1 && x < f.E - 1)
            cr_assert_eq(got[r].score, sc[(size_t)r * f.E + x]);
    }
    /* streaks 1, 2 and 3 all occur (the test would see little otherwise) */
    cr_assert(streaks[1] > 0 && streaks[2] > 0 && streaks[3] > 0, "streaks 1: %d, 2: %d, 3: %d",
              streaks[1], streaks[2], streaks[3]);
    free(sc);
    free(rsc);
    free(cl);
    free(rcl);
    pfix_close(&f);
}

/* ---- thresholds ------------------------------------------------------------------- */

Test(patience, thresholds_are_integers_from_one)
{
    const char *types[] = {"patience", "patience"};
    const double thr0[] = {1.0, 2.0};
    ert_model *m = fx_policy_model(67, MW_MLP, types, thr0, 2);
    cr_assert_eq(ert_model_exit_policy(m, 0), ERT_POLICY_PATIENCE);
    cr_assert_str_eq(ert_policy_string(ERT_POLICY_PATIENCE), "patience");
    cr_assert_eq(ert_model_exit_threshold(m, 1), 2.0f);
    ert_engine *e = tb_engine(m, ERT_MODE_COMPACTED, 4);
    const float bad[] = {0.0f, -1.0f, 0.5f, 1.5f, 2.0000002f, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(ert_engine_set_threshold(e, 1, bad[i]), ERT_INVALID_ARGUMENT, "%g", bad[i]);
        cr_assert(strstr(ert_engine_error(e), isnan(bad[i]) ? "NaN" : "an integer >= 1"), "%s",
                  ert_engine_error(e));
        cr_assert_eq(ert_engine_threshold(e, 1), 2.0f);
    }
    const float good[] = {1.0f, 2.0f, 16.0f, 1e6f};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        cr_assert_eq(ert_engine_set_threshold(e, 0, good[i]), ERT_OK, "%s", ert_engine_error(e));
        cr_assert_eq(ert_engine_threshold(e, 0), good[i]);
    }
    ert_engine_free(e);
    ert_model_free(m);

    /* the loader: the same rule */
    const double files[] = {0.0, 2.5, -1.0};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char dir[256];
        cr_assert_eq(mw_tempdir(dir, sizeof dir), 0);
        cr_assert_eq(mw_random_model(dir, 68, MW_MLP), 0);
        cr_assert_eq(mw_set_policy(dir, 1, "patience", files[i]), 0);
        ert_model *bm = NULL;
        ert_error err = {{0}};
        cr_assert_eq(ert_model_load(dir, &bm, &err), ERT_FORMAT, "%g loaded", files[i]);
        cr_assert(strstr(err.msg, "exits[1].policy.threshold") &&
                      strstr(err.msg, "is out of range (an integer >= 1)"),
                  "%s", err.msg);
        mw_rmtree(dir);
    }
}
