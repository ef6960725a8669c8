#!/usr/bin/env bash
# The long equal-budget compare on both corpora, one run at a time, arm by arm (KJV then Jargon File
# for each arm, so both corpora fill in together). Resumable: rerun it and finished runs are skipped.
#   nohup bash benchmarks/compare/run-both.sh > runs/compare-both.log 2>&1 &
# With corpus names as arguments only those run (e.g. one driver per corpus, one core each:
#   run-both.sh kjv & run-both.sh jargon &).
set -u
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
SPECTRA=${SPECTRA:-.venv/bin/spectra}
arms=$(python3 -c "import yaml; print(' '.join(yaml.safe_load(open('benchmarks/compare/kjv.yaml'))['arms']))")
for arm in $arms; do
  for corpus in ${*:-kjv jargon}; do
    echo "== $(date -u +%FT%TZ) $corpus / $arm (load $(cut -d' ' -f1 /proc/loadavg))"
    "$SPECTRA" compare "benchmarks/compare/$corpus.yaml" --only "$arm" || echo "!! $corpus / $arm failed (rerun to retry)"
  done
done
echo "== $(date -u +%FT%TZ) done"
