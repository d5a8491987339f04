#!/usr/bin/env bash
# The committed digits study (issue 26, docs/tuning.md): every built-in method tuned by the same
# study (12 trials at 2e12 FLOPs, seed 0), then the derived-settings bench of results/README.md
# (finished cells are skipped) and 3 seeds of each method at 4e12 FLOPs with its tuned settings,
# then the leaderboard of the two benches, both kinds of rows side by side. Run from the repository
# root; every step resumes where it stopped when the script is run again.
set -euo pipefail

TRIALS=${TRIALS:-12}
SEED=${SEED:-0}
OUT=${OUT:-runs}
RESULTS=${RESULTS:-results}
METHODS=(sid sida dmd dmd2 progressive consistency f_distill uni_instruct ect scd)
SIDBENCH=${SIDBENCH:-sidbench}

for m in "${METHODS[@]}"; do
    extra=()
    # its 5 stages (K, K, K, 2K, 2K updates) must fit the trial's 219 updates: 5K < 219 (docs/tuning.md)
    if [ "$m" = progressive ]; then extra=("space.method.stage_iterations=intlog(8,43)"); fi
    echo "# $(date -u +%FT%TZ) tune $m"
    $SIDBENCH tune method="$m" dataset=digits total="$TRIALS" seed="$SEED" budget.unit=flops budget.value=2e12 \
        output_root="$OUT" "${extra[@]}"
done
# ECT again with its stage length within the trial's ~52 kimg, at least two stages (docs/tuning.md)
ECT_STAGES=ect-digits-flops2e12-s$SEED-stages
echo "# $(date -u +%FT%TZ) tune ect, stage_kimg narrowed"
$SIDBENCH tune method=ect dataset=digits total="$TRIALS" seed="$SEED" budget.unit=flops budget.value=2e12 \
    output_root="$OUT" study="$ECT_STAGES" "space.method.stage_kimg=uniform(2,26)"

echo "# $(date -u +%FT%TZ) derived settings (results/README.md's bench)"
$SIDBENCH bench methods=[sid,sida,dmd,dmd2,progressive,consistency,f_distill,uni_instruct,ect,scd] datasets=[digits] \
    seeds=3 budget.unit=flops budget.value=4e12 'overrides.progressive=[method.stage_iterations=78]' output_root="$OUT"

echo "# $(date -u +%FT%TZ) tuned settings"
presets=()
for m in "${METHODS[@]}"; do
    presets+=("overrides.$m=[preset_file=$OUT/tune/$m-digits-flops2e12-s$SEED/best.yaml]")
done
$SIDBENCH bench methods=[sid,sida,dmd,dmd2,progressive,consistency,f_distill,uni_instruct,ect,scd] datasets=[digits] \
    seeds=3 budget.unit=flops budget.value=4e12 id=digits-flops4e12-tuned output_root="$OUT" "${presets[@]}"
$SIDBENCH bench methods=[ect] datasets=[digits] seeds=3 budget.unit=flops budget.value=4e12 id=digits-flops4e12-tuned \
    output_root="$OUT" "overrides.ect=[preset_file=$OUT/tune/$ECT_STAGES/best.yaml]"

echo "# $(date -u +%FT%TZ) leaderboard"
$SIDBENCH leaderboard --bench digits-flops4e12 --bench digits-flops4e12-tuned --out "$RESULTS" output_root="$OUT"
echo "# $(date -u +%FT%TZ) done"
