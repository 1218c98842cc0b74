#!/usr/bin/env bash
# A/B of two switchboard-bench release builds, alternated (docs/benchmarks.md, "How to run"):
#   bench/ab.sh BASE_BIN NEW_BIN OUTDIR
# Build each with `cargo build --release -p switchboard-bench` in a checkout of its commit.
set -u
B=$1; N=$2; O=$3; mkdir -p $O
uptime | tee -a $O/uptime
for r in 1 2 3 4 5; do
  for w in base new; do
    bin=$B; [ $w = new ] && bin=$N
    $bin --payload 64 --window 1,128 --fanout 10,100 > $O/fanout-$w-$r.txt 2>&1
    uptime >> $O/uptime
  done
done
for r in 1 2 3 4; do
  for w in base new; do
    bin=$B; [ $w = new ] && bin=$N
    $bin --scenario large-group --quick > $O/lg-$w-$r.txt 2>&1
    uptime >> $O/uptime
  done
done
echo done >> $O/uptime
