/* model_copy.c - a copy of a model directory with other thresholds
 * (exitrt calibrate --write), written whole or not at all. */
#define _GNU_SOURCE /* renameat2 (RENAME_EXCHANGE), realpath, mkdtemp */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "outfile.h"
#include "util.h"

/* The files a model.json names, which a copy holds: the weights first (the
 * one required), then the sample files. */
enum {
    N_FILES = 3
};
static const char *const file_keys[N_FILES] = {"weights", "sample_data", "sample_labels"};

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 65536;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* A new file (in the temporary directory), written and synced; shown is
 * the name messages give it (its place in DIR). */
static int write_bytes(const char *path, const char *shown, const char *buf, size_t len)
{
    FILE *f = fopen(path, "wbx");
    if (!f)
        return cli_error(CLI_FAIL, "%s: cannot create: %s", shown, strerror(errno));
    size_t w = fwrite(buf, 1, len, f);
    int bad = w != len || fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0;
    int e = errno;
    if (fclose(f) != 0 || bad)
        return cli_error(CLI_FAIL, "%s: write failed: %s", shown, strerror(bad ? e : errno));
    return 0;
}

/* The model's directory and model.json path from MODEL (a directory or the
 * path of its model.json). */
static void model_paths(const char *model, char *dir, size_t dcap, char *json, size_t jcap)
{
    struct stat st;
    if (stat(model, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(dir, dcap, "%s", model);
        snprintf(json, jcap, "%s/model.json", model);
        return;
    }
    snprintf(json, jcap, "%s", model);
    cli_parent_dir(model, dir, dcap);
}

/* A new file (in the temporary directory) with the bytes of src, streamed
 * and synced; shown is the name messages give it. */
static int copy_file(const char *src, const char *dst, const char *shown)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return cli_error(CLI_FAIL, "%s: cannot read: %s", src, strerror(errno));
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (out < 0) {
        int e = errno;
        close(in);
        return cli_error(CLI_FAIL, "%s: cannot create: %s", shown, strerror(e));
    }
    static char buf[1 << 16];
    ssize_t r;
    int bad = 0, e = 0;
    while (!bad && (r = read(in, buf, sizeof buf)) != 0) {
        if (r < 0) {
            if (errno == EINTR)
                continue;
            bad = 1, e = errno;
            break;
        }
        for (ssize_t w, done = 0; done < r; done += w)
            if ((w = write(out, buf + done, (size_t)(r - done))) < 0) {
                if (errno == EINTR) {
                    w = 0;
                    continue;
                }
                bad = 2, e = errno;
                break;
            }
    }
    if (!bad && fsync(out) != 0)
        bad = 2, e = errno;
    close(in);
    if (close(out) != 0 && !bad)
        bad = 2, e = errno;
    if (bad == 1)
        return cli_error(CLI_FAIL, "%s: read failed: %s", src, strerror(e));
    if (bad)
        return cli_error(CLI_FAIL, "%s: write failed: %s", shown, strerror(e));
    return 0;
}

/* The name a file model.json names keeps in the copy: its last component
 * (the copy is one flat directory). 0 when it cannot be one. */
static int flat_name(const char *rel, char *out, size_t cap)
{
    const char *b = strrchr(rel, '/');
    b = b ? b + 1 : rel;
    if (snprintf(out, cap, "%s", b) >= (int)cap)
        return 0;
    return out[0] && strcmp(out, "model.json") && strcmp(out, ".") && strcmp(out, "..");
}

/* ---- DIR as a whole ---------------------------------------------------------

   The copy is written into a temporary directory beside DIR ("DIR.tmp.XXXXXX",
   in DIR's parent) and checked to load; then it takes DIR's place by one
   rename. DIR may be missing, an empty directory, or an earlier copy: a
   directory holding only model.json and the weights and sample files it
   names (a regular file each), which is
   replaced as a whole (an atomic exchange where the file system has one)
   and then removed. Anything else in DIR is refused before anything is
   written: calibrate never deletes files it did not write. */

/* Removes a directory of regular files (a temporary, or the replaced copy). */
static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *ent;
        char path[4096];
        while ((ent = readdir(d)))
            if (strcmp(ent->d_name, ".") && strcmp(ent->d_name, "..") &&
                path_join(path, sizeof path, dir, ent->d_name))
                unlink(path);
        closedir(d);
    }
    rmdir(dir);
}

/* What DIR holds: 0 nothing (missing), 1 an empty directory, 2 an earlier
 * copy (see above); else the CLI status after printing why it is refused. */
static int existing_dir(const char *out_dir)
{
    struct stat st;
    if (lstat(out_dir, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        return -cli_error(CLI_FAIL, "--write %s: %s", out_dir, strerror(errno));
    }
    if (S_ISLNK(st.st_mode))
        return -cli_error(CLI_USAGE, "--write %s: is a symbolic link; give the directory itself",
                          out_dir);
    if (!S_ISDIR(st.st_mode))
        return -cli_error(CLI_USAGE, "--write %s: exists and is not a directory", out_dir);
    /* the files model.json names, when they are flat names (a copy's are) */
    char path[4096], named[N_FILES][256] = {""};
    size_t len = 0;
    char *text = path_join(path, sizeof path, out_dir, "model.json") ? read_file(path, &len) : NULL;
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    for (int k = 0; k < N_FILES; k++) {
        cJSON *v = root ? cJSON_GetObjectItemCaseSensitive(root, file_keys[k]) : NULL;
        if (cJSON_IsString(v) && !strchr(v->valuestring, '/') && strlen(v->valuestring) < 256)
            snprintf(named[k], sizeof named[k], "%s", v->valuestring);
    }
    cJSON_Delete(root);
    free(text);
    DIR *d = opendir(out_dir);
    if (!d)
        return -cli_error(CLI_FAIL, "--write %s: %s", out_dir, strerror(errno));
    int n = 0, other = 0;
    char bad[256] = "";
    struct dirent *ent;
    while ((ent = readdir(d))) {
        const char *name = ent->d_name;
        if (!strcmp(name, ".") || !strcmp(name, ".."))
            continue;
        n++;
        int known = !strcmp(name, "model.json");
        for (int k = 0; k < N_FILES; k++)
            known |= named[k][0] && !strcmp(name, named[k]);
        if (known && path_join(path, sizeof path, out_dir, name) && lstat(path, &st) == 0 &&
            S_ISREG(st.st_mode))
            continue;
        if (!other++)
            snprintf(bad, sizeof bad, "%s", name);
    }
    closedir(d);
    if (other)
        return -cli_error(
            CLI_USAGE,
            "--write %s: the directory holds '%s'%s, not only a model written by "
            "calibrate (model.json, its weights and its sample files); nothing written: give a new "
            "or empty directory",
            out_dir, bad, other > 1 ? " and more" : "");
    return n ? 2 : 1;
}

/* Puts the finished copy tmp in DIR's place; 0, or the CLI status after
 * printing the error (DIR then as it was, tmp left for the caller). */
static int replace_dir(const char *tmp, const char *out_dir, int had)
{
    if (had < 2) { /* missing or empty: rename replaces an empty directory */
        if (rename(tmp, out_dir) != 0)
            return cli_error(CLI_FAIL, "--write %s: cannot move the copy in place: %s", out_dir,
                             strerror(errno));
        return 0;
    }
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out_dir, RENAME_EXCHANGE) == 0) {
        remove_tree(tmp); /* now the old copy */
        return 0;
    }
    if (errno != EINVAL && errno != ENOSYS)
        return cli_error(CLI_FAIL, "--write %s: cannot move the copy in place: %s", out_dir,
                         strerror(errno));
    /* no exchange on this file system: the old copy aside, the new one in,
       the old one back if that fails */
    char old[4096];
    if (snprintf(old, sizeof old, "%s.old.XXXXXX", out_dir) >= (int)sizeof old || !mkdtemp(old))
        return cli_error(CLI_FAIL, "--write %s: cannot make a directory beside it: %s", out_dir,
                         strerror(errno));
    if (rename(out_dir, old) != 0) {
        int e = errno;
        rmdir(old);
        return cli_error(CLI_FAIL, "--write %s: cannot move the old copy aside: %s", out_dir,
                         strerror(e));
    }
    if (rename(tmp, out_dir) != 0) {
        int e = errno;
        if (rename(old, out_dir) != 0)
            return cli_error(CLI_FAIL,
                             "--write %s: cannot move the copy in place (%s), nor the old one "
                             "back from %s: %s",
                             out_dir, strerror(e), old, strerror(errno));
        return cli_error(CLI_FAIL, "--write %s: cannot move the copy in place: %s", out_dir,
                         strerror(e));
    }
    remove_tree(old);
    return 0;
}

/* A copy of the model in out_dir with these thresholds: model.json edited
 * (each exit's policy.threshold; nothing else in it changes), the weights
 * and the sample files it names copied beside it (one flat directory: every
 * path a model names stays inside it, FORMAT.md); written whole or not at
 * all (above). */
int cli_write_model(const char *model, const ert_model *m, const float *thresholds,
                    const char *out_dir_arg)
{
    char dir[4096], json[4096], path[4096], shown[4096], rin[PATH_MAX], rout[PATH_MAX];
    char out_dir[4096], parent[4096], tmp[4096];
    model_paths(model, dir, sizeof dir, json, sizeof json);

    /* DIR without trailing slashes, its parent and its real place */
    size_t olen = strlen(out_dir_arg);
    while (olen > 1 && out_dir_arg[olen - 1] == '/')
        olen--;
    if (olen == 0 || olen >= sizeof out_dir)
        return cli_error(CLI_USAGE, "--write '%s': not a usable directory name", out_dir_arg);
    memcpy(out_dir, out_dir_arg, olen);
    out_dir[olen] = '\0';
    const char *slash = strrchr(out_dir, '/');
    const char *base = slash ? slash + 1 : out_dir;
    if (!strcmp(base, ".") || !strcmp(base, "..") || !strcmp(out_dir, "/"))
        return cli_error(CLI_USAGE, "--write %s: name the directory to write, not '%s'",
                         out_dir_arg, base);
    cli_parent_dir(out_dir, parent, sizeof parent);
    if (!realpath(parent, rout))
        return cli_error(CLI_FAIL, "--write %s: %s: %s", out_dir_arg, parent, strerror(errno));
    size_t rl = strlen(rout);
    if (snprintf(rout + rl, sizeof rout - rl, "%s%s", rl > 1 ? "/" : "", base) >=
        (int)(sizeof rout - rl))
        return cli_error(CLI_USAGE, "--write %s: the path is too long", out_dir_arg);
    if (!realpath(dir, rin))
        return cli_error(CLI_FAIL, "%s: %s", dir, strerror(errno));
    if (strcmp(rin, rout) == 0)
        return cli_error(CLI_USAGE, "--write %s: is the model's own directory", out_dir_arg);
    int had = existing_dir(out_dir);
    if (had < 0)
        return -had;

    size_t len = 0;
    char *text = read_file(json, &len), *out = NULL;
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    int rc = 0, made = 0;
    if (!root) {
        rc = cli_error(CLI_FAIL, "%s: cannot read it back", json);
        goto done;
    }
    cJSON *exits = cJSON_GetObjectItemCaseSensitive(root, "exits"), *x;
    cJSON_ArrayForEach (x, exits) {
        cJSON *name = cJSON_GetObjectItemCaseSensitive(x, "name");
        cJSON *policy = cJSON_GetObjectItemCaseSensitive(x, "policy");
        int e = cJSON_IsString(name) ? ert_model_exit_index(m, name->valuestring) : -1;
        if (e < 0 || e >= ert_model_num_exits(m) - 1 || !cJSON_IsObject(policy) ||
            !cJSON_ReplaceItemInObjectCaseSensitive(
                policy, "threshold", cJSON_CreateNumber(cli_float_decimal(thresholds[e])))) {
            rc = cli_error(CLI_FAIL, "%s: exits: cannot set the threshold of '%s'", json,
                           cJSON_IsString(name) ? name->valuestring : "?");
            goto done;
        }
    }
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "weights"))) {
        rc = cli_error(CLI_FAIL, "%s: no weights file named", json);
        goto done;
    }
    /* the names in the copy: the weights and the sample files, flat */
    char names[N_FILES][256], srcs[N_FILES][4096];
    for (int k = 0; k < N_FILES; k++) {
        names[k][0] = '\0';
        cJSON *v = cJSON_GetObjectItemCaseSensitive(root, file_keys[k]);
        if (k > 0 && (!cJSON_IsString(v) || !v->valuestring[0]))
            continue;
        /* relative and inside dir: the loader has refused any other (path_inside) */
        if (!path_join(srcs[k], sizeof srcs[k], dir, v->valuestring)) {
            rc = cli_error(CLI_FAIL, "%s: the %s path is too long", json, file_keys[k]);
            goto done;
        }
        if (k > 0 && access(srcs[k], F_OK) != 0) {
            /* named but not there: the copy names none (the loader never opens it) */
            fprintf(stderr, "exitrt: note: %s: %s '%s' is missing; the copy names none\n", json,
                    file_keys[k], v->valuestring);
            cJSON_DeleteItemFromObjectCaseSensitive(root, file_keys[k]);
            continue;
        }
        if (!flat_name(v->valuestring, names[k], sizeof names[k])) {
            rc = cli_error(CLI_FAIL, "%s: %s '%s' cannot be copied under that name", json,
                           file_keys[k], v->valuestring);
            goto done;
        }
        for (int j = 0; j < k; j++)
            if (names[j][0] && !strcmp(names[j], names[k]) && strcmp(srcs[j], srcs[k])) {
                rc = cli_error(CLI_FAIL,
                               "%s: %s and %s are different files of one name '%s'; the copy "
                               "is one directory: rename one",
                               json, file_keys[j], file_keys[k], names[k]);
                goto done;
            }
        if (!cJSON_ReplaceItemInObjectCaseSensitive(root, file_keys[k],
                                                    cJSON_CreateString(names[k]))) {
            rc = cli_error(CLI_FAIL, "out of memory writing model.json");
            goto done;
        }
    }
    if (!(out = cJSON_Print(root))) {
        rc = cli_error(CLI_FAIL, "out of memory writing model.json");
        goto done;
    }

    /* the copy, in a temporary directory beside DIR */
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", out_dir) >= (int)sizeof tmp) {
        rc = cli_error(CLI_USAGE, "--write %s: the path is too long", out_dir_arg);
        goto done;
    }
    if (!mkdtemp(tmp)) {
        rc = cli_error(CLI_FAIL, "--write %s: cannot create a directory in %s: %s", out_dir_arg,
                       parent, strerror(errno));
        goto done;
    }
    made = 1;
    mode_t mask = umask(0);
    umask(mask);
    (void)chmod(tmp, 0777 & ~mask); /* mkdtemp's 0700 to mkdir's mode */
    for (int k = 0; k < N_FILES; k++) {
        int dup = 0;
        for (int j = 0; j < k; j++)
            dup |= names[j][0] && !strcmp(names[j], names[k]);
        if (!names[k][0] || dup)
            continue;
        if (!path_join(path, sizeof path, tmp, names[k]) ||
            !path_join(shown, sizeof shown, out_dir, names[k])) {
            rc = cli_error(CLI_USAGE, "--write %s: the path is too long", out_dir_arg);
            goto done;
        }
        if ((rc = copy_file(srcs[k], path, shown)))
            goto done;
    }
    if (!path_join(path, sizeof path, tmp, "model.json") ||
        !path_join(shown, sizeof shown, out_dir, "model.json")) {
        rc = cli_error(CLI_USAGE, "--write %s: the path is too long", out_dir_arg);
        goto done;
    }
    if ((rc = write_bytes(path, shown, out, strlen(out))))
        goto done;
    cli_sync_dir(tmp);
    /* what was written must load (its relative paths are DIR's: a sibling) */
    ert_model *check = NULL;
    ert_error err = {{0}};
    if (ert_model_load(tmp, &check, &err) != ERT_OK)
        rc = cli_error(CLI_FAIL, "--write %s: the copy does not load: %s", out_dir_arg, err.msg);
    ert_model_free(check);
    if (rc || (rc = replace_dir(tmp, out_dir, had)))
        goto done;
    made = 0;
    cli_sync_dir(parent);
done:
    if (made)
        remove_tree(tmp);
    cJSON_free(out);
    cJSON_Delete(root);
    free(text);
    return rc;
}
