/* Subcommands of the attnpred CLI. Each returns the process exit status:
 * 0 success, 1 runtime failure (message printed), 2 bad usage. */
#ifndef AP_CLI_H
#define AP_CLI_H

int ap_cmd_capture(int argc, char **argv);
int ap_cmd_inspect(int argc, char **argv);
int ap_cmd_merge(int argc, char **argv);
int ap_cmd_export(int argc, char **argv);
int ap_cmd_train(int argc, char **argv);
int ap_cmd_eval(int argc, char **argv);

/* Print "attnpred <cmd>: <msg>" to stderr. */
void ap_cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
