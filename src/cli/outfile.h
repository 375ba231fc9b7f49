/* outfile.h - output files that a failed command leaves as they were.
 *
 * An output (exitrt run --predictions/--logits, exitrt bench --json/--plot)
 * is written to a temporary file beside its target, created when the
 * command starts (so a bad path fails before any work), and renamed over
 * the target only once every output of the command is complete and synced.
 * On failure the temporaries are removed: an existing target keeps its
 * bytes, a missing one is not created.
 *
 * A target that already exists and is not a regular file (a device such as
 * /dev/null, a FIFO) or a path under /dev/ or /proc/ (/dev/stdout) is
 * written in place: there is nothing there to keep. A target that is a
 * directory is refused. A symbolic link is followed: the file it names is
 * replaced, the link kept. A new file gets the mode fopen would give it
 * (0666 less the umask); a replaced file keeps its mode.
 */
#ifndef ERT_CLI_OUTFILE_H
#define ERT_CLI_OUTFILE_H

#include <stdio.h>

typedef struct cli_out {
    const char *path; /* the target as given (messages name it) */
    char *final;      /* the file renamed over: path with its links followed */
    char *tmp;        /* the temporary beside final; NULL when written in place */
    FILE *f;          /* open for writing ("wb"); NULL once closed */
    int mode;         /* the permissions final gets */
    int done;         /* closed and synced (cli_out_commit_all's first step) */
} cli_out;

/* Opens the temporary of path; o is zeroed first. Returns 0, or CLI_FAIL
 * after printing "PATH: cannot create: ..." (nothing is left behind). */
int cli_out_open(cli_out *o, const char *path);

/* Closes and syncs every one of the n outputs, then renames each over its
 * target. When any of them fails to write (a full disk, a write error
 * seen at close), none is renamed and every temporary is removed. Returns
 * 0, or CLI_FAIL after printing the error. Every o is finished afterwards
 * (cli_out_abort does nothing more). Entries that were never opened (zeroed,
 * f NULL and tmp NULL) are skipped. */
int cli_out_commit_all(cli_out *const *outs, int n);

/* Closes o and removes its temporary. Accepts a zeroed, committed or
 * aborted o. */
void cli_out_abort(cli_out *o);

/* The directory that holds path ("." for a bare name, "/" for "/x") into
 * dir, cut to cap bytes. */
void cli_parent_dir(const char *path, char *dir, size_t cap);

/* fsync of a directory, so the entries renamed into it last; best effort
 * (the files themselves are synced before). */
void cli_sync_dir(const char *dir);

#endif /* ERT_CLI_OUTFILE_H */
