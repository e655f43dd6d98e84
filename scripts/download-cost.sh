#!/bin/sh
# CPU seconds (user + system, from rusage) and peak RSS of `shoal download` for each binary
# given, alternating, RUNS times each, then the median of each. Needs a seeder of TORRENT on
# 127.0.0.1:PORT. The load average is printed with each run (wall time is noisy here).
#
#   scripts/download-cost.sh TORRENT PORT RUNS BINARY...
set -eu
torrent=$1 port=$2 runs=$3
shift 3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
i=0
while [ "$i" -lt "$runs" ]; do
    for bin in "$@"; do
        rm -rf "$out/dl" && mkdir "$out/dl" && sync
        /usr/bin/time -o "$out/t" -f "%U %S %M %e" "$bin" download "$torrent" -o "$out/dl" \
            --peer "127.0.0.1:$port" --listen 127.0.0.1:0 --no-trackers >/dev/null 2>&1
        read -r u s rss wall < "$out/t"
        echo "$bin $(echo "$u + $s" | bc) $rss $wall $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$out/all"
    done
    i=$((i + 1))
done
echo "median: binary, CPU s, peak RSS KiB, wall s"
for bin in "$@"; do
    med() { grep "^$bin " "$out/all" | cut -d' ' -f"$1" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    echo "$bin $(med 2) $(med 3) $(med 4)"
done
