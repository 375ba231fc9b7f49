/* tools.h - what the exitrt command and its bench share above the library
 * (the library itself reads no environment variables). */
#ifndef ERT_TOOLS_H
#define ERT_TOOLS_H

/* The default of --graph-buckets: ERT_GRAPH_BUCKETS when it holds an integer
 * in [0, 64], else 0. */
int tools_graph_buckets_default(void);

#endif /* ERT_TOOLS_H */
