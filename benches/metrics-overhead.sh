#!/usr/bin/env bash
# What the `metrics` feature costs: the load benchmark's throughput and fan-out scenarios (our
# variant) with the feature off, on without a recorder, and on with the Prometheus exporter's
# recorder (`--prometheus`), interleaved over ROUNDS rounds of REPEATS repeats each, so that
# the machine's drift falls on all three alike. Prints each figure's median over every repeat
# and its ratio to the feature off. BENCHMARKS.md has the results.
#
# Usage: benches/metrics-overhead.sh [ROUNDS] [REPEATS]   (default 6 rounds of 7 repeats; at
# least 2 repeats, since the figures are read from the spread of the repeats)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-6}"
repeats="${2:-7}"
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT

# The feature-on build gets a target directory of its own, so that neither rebuilds the other.
off_target="${CARGO_TARGET_DIR:-target}"
on_target="$off_target/metrics-overhead"
bin() {
  cargo bench --bench load "$@" --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1
}
off="$(bin)"
on="$(CARGO_TARGET_DIR="$on_target" bin --features metrics)"
[ -x "$off" ] && [ -x "$on" ] || { echo "building the load benchmark failed" >&2; exit 1; }

for round in $(seq "$rounds"); do
  for config in off on prometheus; do
    case "$config" in
      off) run=("$off") ;;
      on) run=("$on") ;;
      prometheus) run=("$on" --prometheus) ;;
    esac
    for only in throughput fan-out; do
      "${run[0]}" --bench --only "$only" --variant tower-eventsource --repeats "$repeats" \
        "${run[@]:1}" >"$logs/$config.$only.$round" 2>&1
    done
  done
  echo "round $round of $rounds done" >&2
done

# Each repeat's figure, from the "spread across repeats" lines: config, figure, value.
for file in "$logs"/*; do
  config="$(basename "$file" | cut -d. -f1)"
  sed -n '/spread across repeats/,$p' "$file" |
    { grep -E '\| (events|deliveries)/s \| tower-eventsource: ' || true; } |
    while IFS= read -r line; do
      figure="$(echo "$line" | sed 's/^ *//; s/ | tower-eventsource:.*//')"
      echo "$line" | sed 's/.*tower-eventsource: //' | tr -d ',' | tr ' ' '\n' |
        sed '/^$/d' | while IFS= read -r value; do printf '%s|%s|%s\n' "$config" "$figure" "$value"; done
    done
done >"$logs/all"

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
cut -d'|' -f2- "$logs/all" | cut -d'|' -f1-2 | sort -u | while IFS= read -r figure; do
  base="$(grep -F "off|$figure|" "$logs/all" | cut -d'|' -f4 | median)"
  printf '%s\n' "$figure"
  for config in off on prometheus; do
    values="$(grep -F "$config|$figure|" "$logs/all" | cut -d'|' -f4)"
    count="$(echo "$values" | wc -l)"
    med="$(echo "$values" | median)"
    awk -v c="$config" -v m="$med" -v b="$base" -v n="$count" \
      'BEGIN { printf "  %-11s median %12.0f over %d repeats, %.3f x off\n", c, m, n, m / b }'
  done
done
