#!/bin/sh
# The exit tail of `shoal download`: from its last write of piece data (pwritev) to the process
# exit (exit_group), under strace (only those two calls are stopped on, with seccomp-bpf), for
# each binary given, alternating, RUNS times each. Needs a seeder of TORRENT on 127.0.0.1:PORT.
#
#   scripts/exit-tail.sh TORRENT PORT RUNS BINARY...
set -eu
torrent=$1 port=$2 runs=$3
shift 3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
i=0
while [ "$i" -lt "$runs" ]; do
    for bin in "$@"; do
        rm -rf "$out/dl" && mkdir "$out/dl" && sync
        strace -f --seccomp-bpf -tt -e trace=pwritev,pwrite64,exit_group -e signal=none -o "$out/st" \
            "$bin" download "$torrent" -o "$out/dl" --peer "127.0.0.1:$port" \
            --listen 127.0.0.1:0 --no-trackers >/dev/null 2>&1
        awk -v bin="$bin" '
            function secs(t,  a) { split(t, a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
            /pwrite/ { last = secs($2) }
            /exit_group/ { exit_at = secs($2) }
            END { printf "%s  last write -> exit %.1f ms\n", bin, (exit_at - last) * 1000 }
        ' "$out/st"
    done
    i=$((i + 1))
done
