/* bench_calibrate.c - thresholds from score quantiles, and ideal-speedup arithmetic. */
#include "bench_calibrate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "calib_search.h"
#include "policy.h"

float calib_clamp_threshold(ert_policy_kind kind, float t)
{
    if (kind == ERT_POLICY_PATIENCE) /* streaks are integers: >= t iff >= ceil(t) */
        return !(t >= 1.0f) ? 1.0f : isinf(t) ? 3.4e38f : ceilf(t);
    if (!(t >= 0.0f))
        return 0.0f; /* also NaN */
    if (kind != ERT_POLICY_ENTROPY && t > 1.0f)
        return 1.0f;
    if (isinf(t))
        return 3.4e38f;
    return t;
}

static int cmp_asc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int cmp_desc(const void *a, const void *b) { return cmp_asc(b, a); }

/* A value strictly above v with room to spare: calibration scores and the
 * scores an engine computes later may differ in the last bits. */
static float above(float v) { return v + fmaxf(fabsf(v) * 1e-3f, 1e-6f); }

int calib_pick_threshold(ert_policy_kind kind, const float *scores, int n, int take, float *scratch,
                         float *thr)
{
    int lt = kind == ERT_POLICY_ENTROPY;
    int m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(scores[i]))
            scratch[m++] = scores[i];
    /* exit order: the first j of v exit when j rows leave */
    qsort(scratch, (size_t)m, sizeof *scratch, lt ? cmp_asc : cmp_desc);
    const float *v = scratch;
    if (take < 0)
        take = 0;
    if (take > m)
        take = m;

    /* j rows can exit alone iff j is 0, m, or v[j-1] and v[j] differ */
    int j = take;
    for (int d = 0; d <= m; d++) {
        int a = take - d, b = take + d;
        if (a >= 0 && (a == 0 || a == m || v[a - 1] != v[a])) {
            j = a;
            break;
        }
        if (b <= m && (b == 0 || b == m || v[b - 1] != v[b])) {
            j = b;
            break;
        }
    }

    float t;
    if (m == 0)
        t = lt ? 0.0f : 1.0f;
    else if (lt)
        t = j == 0 ? 0.0f : j == m ? above(v[m - 1]) : calib_between(v[j - 1], v[j]);
    else
        t = j == 0 ? above(v[0]) : j == m ? 0.0f : calib_between(v[j], v[j - 1]);
    t = calib_clamp_threshold(kind, t);
    *thr = t;

    int count = 0;
    for (int i = 0; i < n; i++)
        count += ert_policy_exits(kind, scores[i], t);
    return count;
}

int calib_profile(int num_exits, const ert_policy_kind *kinds, const float *scores, int n,
                  const double *shares, int nshares, float *thresholds, int32_t *targets,
                  int32_t *counts, int32_t *exits)
{
    if (num_exits < 1 || num_exits > ERT_MAX_EXITS || n < 0 || !kinds || (n > 0 && !scores))
        return -1;
    int *alive = malloc(sizeof *alive * (size_t)(n > 0 ? n : 1));
    float *col = malloc(sizeof *col * (size_t)(n > 0 ? n : 1));
    float *scratch = malloc(sizeof *scratch * (size_t)(n > 0 ? n : 1));
    if (!alive || !col || !scratch) {
        free(alive);
        free(col);
        free(scratch);
        return -1;
    }
    int nalive = n;
    for (int i = 0; i < n; i++) {
        alive[i] = i;
        if (exits)
            exits[i] = num_exits - 1;
    }
    int assigned = 0;
    for (int e = 0; e < num_exits - 1; e++) {
        double s = e < nshares && shares ? shares[e] : 0.0;
        if (!(s > 0.0))
            s = 0.0;
        long want = lround(s * (double)n);
        if (want > nalive)
            want = nalive;
        targets[e] = (int32_t)want;
        assigned += (int)want;

        for (int i = 0; i < nalive; i++)
            col[i] = scores[(size_t)alive[i] * (size_t)num_exits + (size_t)e];
        calib_pick_threshold(kinds[e], col, nalive, (int)want, scratch, &thresholds[e]);

        int kept = 0, left = 0;
        for (int i = 0; i < nalive; i++) {
            if (ert_policy_exits(kinds[e], col[i], thresholds[e])) {
                left++;
                if (exits)
                    exits[alive[i]] = e;
            } else {
                alive[kept++] = alive[i];
            }
        }
        counts[e] = left;
        nalive = kept;
    }
    counts[num_exits - 1] = nalive;
    targets[num_exits - 1] = n - assigned > 0 ? n - assigned : 0;
    free(alive);
    free(col);
    free(scratch);
    return 0;
}

double calib_ideal_speedup(const ert_model *m, const plan *p, const int32_t *counts)
{
    uint64_t rows = 0;
    for (int s = 0; s < p->num_stages; s++)
        rows += (uint64_t)counts[s];
    uint64_t ideal = plan_ideal_macs(m, p, counts);
    if (ideal == 0)
        return 0.0;
    return (double)rows * (double)m->macs_full / (double)ideal;
}

double calib_efficiency(double measured_speedup, double ideal_speedup)
{
    return ideal_speedup > 0.0 ? measured_speedup / ideal_speedup : 0.0;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double calib_percentile(const double *v, int n, double q, double *scratch)
{
    if (n <= 0)
        return 0.0;
    memcpy(scratch, v, sizeof *v * (size_t)n);
    qsort(scratch, (size_t)n, sizeof *scratch, cmp_dbl);
    /* nearest rank: the ceil(q*n)-th smallest, 1-based */
    long r = (long)ceil(q * (double)n);
    if (r < 1)
        r = 1;
    if (r > n)
        r = n;
    return scratch[r - 1];
}
