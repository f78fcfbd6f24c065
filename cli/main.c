#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "common/util.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} ap_command;

static const ap_command commands[] = {
    {"capture", ap_cmd_capture, "run a GGUF model on prompts and write its attention to HDF5"},
    {"inspect", ap_cmd_inspect, "summarise a trace (text or --json), draw heatmaps (--png)"},
    {"merge", ap_cmd_merge, "join trace shards written with capture --shard into one file"},
    {"train", ap_cmd_train, "fit the spatiotemporal CNN predictor on traces"},
    {"export", ap_cmd_export, "write a run's best predictor as PyTorch-named safetensors"},
    {"eval", ap_cmd_eval, "score KV selection: replay traces, or decode the task suite live"},
};

void ap_cli_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "attnpred %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void usage(FILE *out) {
    fprintf(out,
            "attnpred %s - learn where an LLM will look next (AttentionPredictor)\n\n"
            "usage: attnpred <command> [options]   (attnpred <command> --help for details)\n\n"
            "commands:\n",
            AP_VERSION_STRING);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\noptions:\n  --help     this text\n  --version  print the version\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("attnpred %s\n", AP_VERSION_STRING);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "attnpred: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
