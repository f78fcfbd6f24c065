/* attnpred merge: join trace shards (capture --shard i/n) into one trace. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "capture/trace.h"
#include "cli/cli.h"

#define CMD "merge"

static void merge_usage(FILE *out) {
    fprintf(out,
            "usage: attnpred merge --out OUT.h5 [--force] IN1.h5 IN2.h5 ...\n\n"
            "Join complete traces written with the same model and settings (typically the\n"
            "shards of capture --shard i/n) into one trace. Sequence groups are copied\n"
            "as stored (no recompression), inputs in the order given and each input's\n"
            "sequences in capture order. Refused: inputs whose settings differ (model,\n"
            "dimensions, block size, history, attnpred version), a sequence id present in\n"
            "two inputs, and unfinished (.partial) inputs. OUT is written under a\n"
            "temporary name and renamed when complete.\n\n"
            "options:\n"
            "  --out PATH   merged trace to write (required)\n"
            "  --force      overwrite an existing OUT\n"
            "  --help       this text\n");
}

int ap_cmd_merge(int argc, char **argv) {
    const char *out = NULL;
    int force = 0;
    enum { O_OUT = 256, O_FORCE, O_HELP };
    static const struct option longopts[] = {{"out", required_argument, 0, O_OUT},
                                             {"force", no_argument, 0, O_FORCE},
                                             {"help", no_argument, 0, O_HELP},
                                             {0, 0, 0, 0}};
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_OUT: out = optarg; break;
        case O_FORCE: force = 1; break;
        case O_HELP: merge_usage(stdout); return 0;
        default:
            ap_cli_error(CMD, "unknown option or missing value '%s' (see --help)",
                         argv[optind - 1]);
            return 2;
        }
    }
    if (!out) {
        ap_cli_error(CMD, "--out is required (see --help)");
        return 2;
    }
    int n_in = argc - optind;
    if (n_in < 1) {
        ap_cli_error(CMD, "no input traces given (see --help)");
        return 2;
    }
    for (int i = optind; i < argc; i++)
        if (!strcmp(argv[i], out)) {
            ap_cli_error(CMD, "%s is both an input and the output", out);
            return 2;
        }
    ap_err err;
    ap_err_clear(&err);
    if (ap_trace_merge((const char *const *)(argv + optind), n_in, out, force, &err)) {
        ap_cli_error(CMD, "%s", err.msg);
        return 1;
    }
    ap_trace *t = NULL;
    if (ap_trace_open(out, &t, &err)) {
        ap_cli_error(CMD, "%s", err.msg);
        return 1;
    }
    fprintf(stderr, "merge: wrote %s: %d sequences from %d inputs\n", out, ap_trace_n_seq(t),
            n_in);
    ap_trace_close(t);
    return 0;
}
