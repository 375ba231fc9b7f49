/* tools.h - what the exitrt command and its bench share above the library
 * (the library itself reads no environment variables). */
#ifndef ERT_TOOLS_H
#define ERT_TOOLS_H

/* The default of --graph-buckets: ERT_GRAPH_BUCKETS when it holds an integer
 * in [0, 64], else 0. */
int tools_graph_buckets_default(void);

/* Numbers given on the command line (--threshold, --deadline, bench
 * --profile), read the way the model loader reads model.json's numbers
 * (strtod, as cJSON does, then a float32 range check): the whole string
 * must be a number; a value too small for the type (1e-38 for a float,
 * 1e-400 for a double) is a number, rounded to a subnormal or to zero;
 * NaN, infinities and magnitudes beyond the type's range are refused.
 * Returns NULL with *out set, else what is wrong as a phrase to follow the
 * quoted value ("is not a number"); *out is then left alone. */
const char *tools_parse_double(const char *s, double *out);
const char *tools_parse_float(const char *s, float *out);

/* Seconds on the monotonic clock, for the command's and the bench's timings. */
double tools_now_s(void);

#endif /* ERT_TOOLS_H */
