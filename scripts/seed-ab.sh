#!/bin/bash
# Seeding A/B (issue 15, case (d)): alternating downloads by a libtorrent downloader
# (benches/helpers/lt_bench.py, default settings) from each seeder given, one after the other,
# RUNS rounds. Prints per download: the downloader's own connect-to-complete seconds, wall
# seconds (spawn to exit), the seeder's CPU s/GiB (/proc/PID/stat) and the downloader's
# (user + sys), and the load.
#
#   scripts/seed-ab.sh RUNS SEEDER...
#
# A SEEDER is a shoal binary (started here as `shoal seed` on a free loopback port, stopped at
# the end) or `lt`: a libtorrent seeder already running (`lt_bench.py seed TORRENT DIR PORT -
# tuned`), its port in $LTPORT. Environment: TORRENT and DATA (the torrent and its file), GIB
# (the file's size in GiB, default 0.5), OUT (scratch folder, default /tmp/seed-ab).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
LT_BENCH="$HERE/../benches/helpers/lt_bench.py"
: "${TORRENT:?the .torrent}" "${DATA:?its data file}"
GIB=${GIB:-0.5}
OUT=${OUT:-/tmp/seed-ab}
mkdir -p "$OUT"
RUNS=$1; shift
SEEDERS=("$@")
PIDS=(); PORTS=(); MINE=()
i=0
for s in "${SEEDERS[@]}"; do
  if [ "$s" = lt ]; then
    PIDS+=("$(pgrep -f "lt_bench.py seed $TORRENT" | head -1)"); PORTS+=("${LTPORT:?port of the lt seeder}")
  else
    "$s" seed "$TORRENT" "$DATA" --listen 127.0.0.1:0 --no-trackers --no-dht --no-lsd > "$OUT/seed$i.log" 2>&1 &
    PIDS+=($!); MINE+=($!); sleep 3
    PORTS+=("$(grep -o 'on 127.0.0.1:[0-9]*' "$OUT/seed$i.log" | head -1 | cut -d: -f2)")
  fi
  i=$((i+1))
done
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
for r in $(seq 1 "$RUNS"); do
  for j in "${!SEEDERS[@]}"; do
    dir="$OUT/out$j"; rm -rf "$dir"; mkdir -p "$dir"; sync
    c0=$(cpu "${PIDS[$j]}"); t0=$(date +%s.%N)
    comp=$(/usr/bin/time -f "%U %S" -o "$OUT/time.txt" /usr/bin/python3 "$LT_BENCH" download "$TORRENT" "$dir" "127.0.0.1:${PORTS[$j]}" 120 | awk '{print $2}')
    t1=$(date +%s.%N); c1=$(cpu "${PIDS[$j]}")
    read -r u s < "$OUT/time.txt"
    printf "%d %-24s complete %6s wall %6.3f seedcpu/GiB %5.2f downcpu/GiB %5.2f load %s\n" "$r" "$(basename "${SEEDERS[$j]}")" "$comp" \
      "$(echo "$t1-$t0" | bc)" "$(echo "scale=3; ($c1-$c0)/$tck/$GIB" | bc)" "$(echo "scale=3; ($u+$s)/$GIB" | bc)" "$(cut -d' ' -f1 /proc/loadavg)"
    rm -rf "$dir"
  done
done
for p in "${MINE[@]}"; do kill "$p"; done
