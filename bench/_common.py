"""What the benchmarks in bench/ (fanout, idle_memory, handshakes, latency) share, as
one namespace: scripts `import _common as c` and call `c.<name>`. It lives in

  _config    the project on sys.path, the edge's secret and prefix, the results folder
  _machine   CPU, memory and load of processes and of the machine; what the run ran on
  _targets   the servers under test (started with switchboard.cli.launch):
             switchboard  a nats-server (the backbone, JetStream on) + one edge process
             reference    a second nats-server with its own WebSocket listener; clients
                          speak the NATS text protocol over WebSocket
  _clients   Switchboard and NATS-over-WebSocket clients, opened many at a time
  _workers   load generators in separate processes (multiprocessing, spawn), talking
             to the parent over a Pipe: the child sends ("ready", info) once, then
             answers each command (a tuple whose first item is its name) with one
             reply; ("close",) ends it. On this kind of machine they share the cores
             with the server under test.
  _run       options, running both targets with cleanup, tables and the JSON report
"""

from __future__ import annotations

from _clients import (
    abort_all,
    connect_publisher,
    mint_token,
    mint_tokens,
    nats_ws_open,
    open_clients,
    report_ready,
    sb_open,
)
from _config import PREFIX, RESULTS, ROOT, SECRET
from _machine import (
    LOADGEN_NOTE,
    CpuMeter,
    busy_cores,
    loadavg,
    machine_info,
    proc_cpu_s,
    proc_rss_kib,
    prom_value,
    raise_nofile,
    self_cpu_s,
    wait_quiet,
)
from _run import (
    MACHINE_ROWS,
    arg_parser,
    fmt,
    keyed_rows,
    now_utc,
    parse_args,
    print_table,
    ratio,
    run_main,
    run_targets,
    save_report,
)
from _targets import Reference, Switchboard, Target, run_step
from _workers import Workers, client_specs, percentile, pipe_recv, start_workers

__all__ = [
    "LOADGEN_NOTE",
    "MACHINE_ROWS",
    "PREFIX",
    "RESULTS",
    "ROOT",
    "SECRET",
    "CpuMeter",
    "Reference",
    "Switchboard",
    "Target",
    "Workers",
    "abort_all",
    "arg_parser",
    "busy_cores",
    "client_specs",
    "connect_publisher",
    "fmt",
    "keyed_rows",
    "loadavg",
    "machine_info",
    "mint_token",
    "mint_tokens",
    "nats_ws_open",
    "now_utc",
    "open_clients",
    "parse_args",
    "percentile",
    "pipe_recv",
    "print_table",
    "proc_cpu_s",
    "proc_rss_kib",
    "prom_value",
    "raise_nofile",
    "ratio",
    "report_ready",
    "run_main",
    "run_step",
    "run_targets",
    "save_report",
    "sb_open",
    "self_cpu_s",
    "start_workers",
    "wait_quiet",
]
