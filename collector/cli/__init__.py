"""The collector's commands, one module per command group (wired in `posmon.cli`):

- `collector`: `posmon collector run | status | openapi | config-example`
- `settlement`: `posmon settlement import`
- `alerts`: `posmon alerts list | show | ack | silence | silences`
- `cases`: `posmon cases list | show | advance | evidence`
- `tokens`: `posmon tokens create | list | revoke`
- `common`: the configuration option, the database they open, how they print.

Each module imports the collector's libraries inside its commands, so `--help` stays fast.
"""
