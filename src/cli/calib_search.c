/* calib_search.c - joint threshold search to an accuracy target, and the
 * held-out bound on the accuracy drop (calib_search.h). */
#include "calib_search.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

/* ---- one threshold vector ----------------------------------------------------------- */

/* The exit row i leaves at, looking at exits from..num_exits-1 only. */
static int exit_from(const calib_problem *p, const float *thr, int i, int from)
{
    const int E = p->num_exits;
    const float *sc = p->scores + (size_t)i * E;
    for (int e = from; e < E - 1; e++)
        if (ert_policy_exits(p->kinds[e], sc[e], thr[e]))
            return e;
    return E - 1;
}

static int right_at(const calib_problem *p, int i, int e)
{
    return p->classes[(size_t)i * p->num_exits + e] == p->labels[i];
}

void calib_evaluate(const calib_problem *p, const float *thresholds, const int *rows, int count,
                    calib_outcome *out)
{
    memset(out, 0, sizeof *out);
    const int n = rows ? count : p->n;
    for (int r = 0; r < n; r++) {
        int i = rows ? rows[r] : r;
        int e = exit_from(p, thresholds, i, 0);
        int ok = right_at(p, i, e), fin = right_at(p, i, p->num_exits - 1);
        out->taken[e]++;
        out->right[e] += ok;
        out->correct += ok;
        out->correct_final += fin;
        out->final_only += fin && !ok;
        out->exit_only += ok && !fin;
        out->cost += p->cost[e];
    }
}

/* ---- thresholds of a cut ------------------------------------------------------------ */

static int fires_below(ert_policy_kind k) { return k == ERT_POLICY_ENTROPY; }
static int integer_policy(ert_policy_kind k) { return k == ERT_POLICY_PATIENCE; }

float calib_never(const calib_problem *p, int e)
{
    ert_policy_kind k = p->kinds[e];
    if (fires_below(k))
        return 0.0f; /* score < 0 never holds */
    if (integer_policy(k))
        return (float)(e + 2); /* a streak at exit e is at most e + 1 long */
    return 1.0f;
}

/* The threshold that fires every finite score at exit e. */
static float calib_always(const calib_problem *p, int e)
{
    ert_policy_kind k = p->kinds[e];
    if (fires_below(k)) /* entropy <= log K, plus room for rounding */
        return logf((float)(p->num_classes > 1 ? p->num_classes : 1)) + 1.0f;
    if (integer_policy(k))
        return 1.0f;
    return 0.0f;
}

float calib_between(float lo, float hi)
{
    float t = (float)(((double)lo + (double)hi) * 0.5);
    return (t > lo && t <= hi) ? t : hi;
}

/* ---- one exit's best cut ----------------------------------------------------------- */

typedef struct cand {
    float s;      /* the score at the exit being searched */
    int dcorrect; /* correct if it leaves here minus correct if it goes on */
    double dcost; /* the same for the cost */
} cand;

static int cmp_cand(const void *a, const void *b)
{
    float x = ((const cand *)a)->s, y = ((const cand *)b)->s;
    return (x > y) - (x < y);
}

/* How candidates are ranked: with lambda >= 0, by cost - lambda * correct
 * (a Lagrangian problem); with lambda < 0, feasibility (correct >= need)
 * first, then the lower cost, then more correct; infeasible ones by more
 * correct, then the lower cost. */
typedef struct rank {
    double lambda;
    int64_t need;
} rank;

static int better(const rank *k, double cost_a, int64_t ok_a, double cost_b, int64_t ok_b)
{
    if (k->lambda >= 0) {
        double ja = cost_a - k->lambda * (double)ok_a, jb = cost_b - k->lambda * (double)ok_b;
        double eps = 1e-12 * (fabs(ja) + fabs(jb));
        if (ja < jb - eps)
            return 1;
        if (ja > jb + eps)
            return 0;
        return ok_a > ok_b;
    }
    int fa = ok_a >= k->need, fb = ok_b >= k->need;
    if (fa != fb)
        return fa;
    if (fa) /* costs are whole MACs: exact in a double */
        return cost_a < cost_b || (cost_a == cost_b && ok_a > ok_b);
    return ok_a > ok_b || (ok_a == ok_b && cost_a < cost_b);
}

typedef struct work {
    cand *c; /* [rows] */
} work;

/* Sets thr[e] to the best cut for the rows given the other thresholds, if
 * it is strictly better than thr[e] itself (so coordinate descent ends).
 * Returns whether thr[e] changed. */
static int improve_exit(const calib_problem *p, const int *rows, int count, float *thr, int e,
                        const rank *k, work *w)
{
    const int E = p->num_exits;
    const ert_policy_kind kind = p->kinds[e];
    double base_cost = 0, cur_cost = 0;
    int64_t base_ok = 0, cur_ok = 0;
    int m = 0;
    for (int r = 0; r < count; r++) {
        int i = rows ? rows[r] : r;
        int x = exit_from(p, thr, i, 0);
        if (x < e) { /* left before exit e: the same under every cut */
            base_cost += p->cost[x];
            base_ok += right_at(p, i, x);
            cur_cost += p->cost[x];
            cur_ok += right_at(p, i, x);
            continue;
        }
        int on = x == e ? exit_from(p, thr, i, e + 1) : x; /* where it goes if e does not fire */
        cur_cost += p->cost[x];
        cur_ok += right_at(p, i, x);
        base_cost += p->cost[on];
        base_ok += right_at(p, i, on);
        float s = p->scores[(size_t)i * E + e];
        if (!isfinite(s))
            continue; /* never fires */
        w->c[m].s = s;
        w->c[m].dcorrect = right_at(p, i, e) - right_at(p, i, on);
        w->c[m].dcost = p->cost[e] - p->cost[on];
        m++;
    }
    qsort(w->c, (size_t)m, sizeof *w->c, cmp_cand);

    /* Cut j: ">=" rules fire c[j..m), "<" rules fire c[0..j). Only cuts
     * between distinct scores are thresholds. Sweep j upwards keeping the
     * prefix sums; a ">=" cut's fired sum is the total minus the prefix. */
    double tot_dcost = 0;
    int64_t tot_dok = 0;
    for (int j = 0; j < m; j++) {
        tot_dcost += w->c[j].dcost;
        tot_dok += w->c[j].dcorrect;
    }
    const int lt = fires_below(kind);
    double pre_dcost = 0, best_cost = 0;
    int64_t pre_dok = 0, best_ok = 0;
    int best_j = -1;
    for (int j = 0; j <= m; j++) {
        if (j > 0) {
            pre_dcost += w->c[j - 1].dcost;
            pre_dok += w->c[j - 1].dcorrect;
        }
        if (j > 0 && j < m && w->c[j - 1].s == w->c[j].s)
            continue;
        double cst = base_cost + (lt ? pre_dcost : tot_dcost - pre_dcost);
        int64_t ok = base_ok + (lt ? pre_dok : tot_dok - pre_dok);
        if (best_j < 0 || better(k, cst, ok, best_cost, best_ok)) {
            best_j = j;
            best_cost = cst;
            best_ok = ok;
        }
    }
    /* Rows whose e-score is exactly 1 fire a [0,1] rule at any threshold,
     * and the current threshold may sit anywhere: only move on a strict
     * gain, measured by the engine's own rule below. */
    if (!better(k, best_cost, best_ok, cur_cost, cur_ok))
        return 0;
    float t;
    int none = lt ? best_j == 0 : best_j == m, all = lt ? best_j == m : best_j == 0;
    if (none)
        t = calib_never(p, e);
    else if (all)
        t = calib_always(p, e);
    else if (integer_policy(kind))
        t = w->c[best_j].s; /* streaks are whole numbers: fires c[j] and up */
    else
        t = calib_between(w->c[best_j - 1].s, w->c[best_j].s);
    if (t == thr[e])
        return 0;
    float old = thr[e];
    thr[e] = t;
    /* Accept only what the exact rule confirms (a never/always threshold
     * can fire differently from the cut where scores sit on the range's
     * ends). */
    calib_outcome o;
    calib_evaluate(p, thr, rows, count, &o);
    if (!better(k, o.cost, o.correct, cur_cost, cur_ok)) {
        thr[e] = old;
        return 0;
    }
    return 1;
}

/* Coordinate descent: sweeps the early exits in order until none moves. */
static void descend(const calib_problem *p, const int *rows, int count, float *thr, const rank *k,
                    work *w)
{
    for (int round = 0; round < 100; round++) {
        int moved = 0;
        for (int e = 0; e < p->num_exits - 1; e++)
            moved |= improve_exit(p, rows, count, thr, e, k, w);
        if (!moved)
            break;
    }
}

int calib_search(const calib_problem *p, const int *rows, int count, int64_t need,
                 float *thresholds)
{
    const int E = p->num_exits, n = rows ? count : p->n;
    work w = {malloc(sizeof(cand) * (size_t)(n > 0 ? n : 1))};
    if (!w.c)
        return -1;
    const rank constrained = {-1.0, need};
    float never[ERT_MAX_EXITS], cur[ERT_MAX_EXITS], best[ERT_MAX_EXITS];
    for (int e = 0; e < E - 1; e++)
        never[e] = calib_never(p, e);

    /* Start from no early exit. */
    memcpy(best, never, sizeof(float) * (size_t)(E - 1));
    descend(p, rows, n, best, &constrained, &w);
    calib_outcome bo;
    calib_evaluate(p, best, rows, n, &bo);

    /* Then from each Lagrangian solution: lambda is the MACs one more
     * correct prediction is worth, from a tiny share of the final exit's
     * cost (cost first) to far above it (accuracy first), in steps of 2^0.25. */
    const double top = p->cost[E - 1] > 0 ? p->cost[E - 1] : 1.0;
    for (int s = 0; s <= 96; s++) {
        rank lag = {top * pow(2.0, 4.0 - 0.25 * s), 0};
        memcpy(cur, never, sizeof(float) * (size_t)(E - 1));
        descend(p, rows, n, cur, &lag, &w);
        descend(p, rows, n, cur, &constrained, &w);
        calib_outcome o;
        calib_evaluate(p, cur, rows, n, &o);
        if (better(&constrained, o.cost, o.correct, bo.cost, bo.correct)) {
            memcpy(best, cur, sizeof(float) * (size_t)(E - 1));
            bo = o;
        }
    }
    free(w.c);
    memcpy(thresholds, best, sizeof(float) * (size_t)(E - 1));
    return bo.correct >= need;
}

/* ---- binomial bounds ---------------------------------------------------------------- */

/* P(X <= x) for X ~ Binomial(n, p), summed in log space from the shorter
 * tail. */
static double binom_cdf(int64_t x, int64_t n, double p)
{
    if (x < 0)
        return 0.0;
    if (x >= n)
        return 1.0;
    if (p <= 0.0)
        return 1.0;
    if (p >= 1.0)
        return 0.0;
    const double lp = log(p), lq = log1p(-p), lnf = lgamma((double)n + 1.0);
    double s = 0.0;
    int upper = x > n / 2; /* sum the other tail and subtract */
    int64_t lo = upper ? x + 1 : 0, hi = upper ? n : x;
    for (int64_t k = lo; k <= hi; k++)
        s += exp(lnf - lgamma((double)k + 1.0) - lgamma((double)(n - k) + 1.0) + (double)k * lp +
                 (double)(n - k) * lq);
    return upper ? 1.0 - s : s;
}

double calib_binom_upper(int64_t x, int64_t n, double alpha)
{
    if (n <= 0 || x >= n)
        return 1.0;
    double lo = (double)x / (double)n, hi = 1.0;
    for (int it = 0; it < 100; it++) { /* P(X <= x) falls as p rises */
        double mid = 0.5 * (lo + hi);
        if (binom_cdf(x, n, mid) > alpha)
            lo = mid;
        else
            hi = mid;
    }
    return hi;
}

double calib_binom_lower(int64_t x, int64_t n, double alpha)
{
    if (n <= 0 || x <= 0)
        return 0.0;
    double lo = 0.0, hi = (double)x / (double)n;
    for (int it = 0; it < 100; it++) { /* P(X >= x) = 1 - P(X <= x-1) rises with p */
        double mid = 0.5 * (lo + hi);
        if (1.0 - binom_cdf(x - 1, n, mid) < alpha)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

double calib_drop_upper(int64_t final_only, int64_t exit_only, int64_t n, double confidence)
{
    double alpha = (1.0 - confidence) / 2.0;
    return calib_binom_upper(final_only, n, alpha) - calib_binom_lower(exit_only, n, alpha);
}

/* ---- split -------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void calib_shuffle(int *idx, int n, uint64_t seed)
{
    uint64_t s = seed;
    for (int i = 0; i < n; i++)
        idx[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(splitmix64(&s) % (uint64_t)(i + 1));
        int t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}
