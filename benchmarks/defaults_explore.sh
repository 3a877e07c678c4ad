#!/usr/bin/env bash
# Issue 11 exploration on the lent GPU: parents (3 seeds, recipe v2 + val split), then
# fine-tuning variants at ratio 0.7 / 0.8. Results (JSON) come back as tarballs under $OUT.
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 RTDEPLOY_CACHE_DIR=/tmp/cache PYTHONUNBUFFERED=1
R=/tmp/runs; L=/tmp/logs; mkdir -p $R $L
nvidia-smi -L; nproc; python3 -c "import torch, torch_pruning, rtdeploy; print(torch.__version__, torch.cuda.is_available())"
D=.gpu/ucm64
mkdir -p /tmp/half; for c in $D/*/; do n=$(basename $c); mkdir -p /tmp/half/$n; ls $c | sort | head -50 | while read f; do cp $c/$f /tmp/half/$n/; done; done
RT="python3 -m rtdeploy"
V2="--arch resnet18_se --device cuda --epochs 60 --lr 0.1 --schedule onecycle --augment --crop-scale 0.5 --label-smoothing 0.1 --val-frac 0.1"
PAPER="--arch resnet18_se --device cuda --epochs 30 --lr 0.05 --schedule cosine"
jobs1=/tmp/jobs1; : > $jobs1
for s in 0 1 2; do
  echo "$RT train --data $D --img-size 64 $V2 --seed $s --out $R/p_s$s.pt" >> $jobs1
  echo "$RT train --data $D --img-size 64 $PAPER --seed $s --out $R/paper_s$s.pt" >> $jobs1
  echo "$RT train --data $D --img-size 32 $V2 --seed $s --out $R/p32_s$s.pt" >> $jobs1
  echo "$RT train --data /tmp/half --img-size 64 $V2 --seed $s --out $R/half_s$s.pt" >> $jobs1
done
echo "$RT train --data $D --img-size 64 $V2 --epochs 100 --seed 0 --out $R/p100_s0.pt" >> $jobs1
echo "$RT train --data $D --img-size 64 $V2 --val-frac 0.05 --seed 0 --out $R/pv05_s0.pt" >> $jobs1
t0=$(date +%s)
cat -n $jobs1 | xargs -P 14 -L 1 bash -c 'n=$0; "$@" > /tmp/logs/j1_$n.log 2>&1; echo "job1 $n rc=$? $(date +%T)"'
echo "phase1 $(( $(date +%s) - t0 )) s"
for f in $R/*.pt; do case $f in *paper*) ;; *) d=$D; case $f in *half*) d=/tmp/half;; esac; $RT eval $f --data $d --split test --json ${f%.pt}.test.json --no-confusion > /dev/null 2>&1;; esac; done
for f in $R/paper*.pt; do $RT eval $f --data $D --split test --json ${f%.pt}.test.json --no-confusion > /dev/null 2>&1; done
tar czf $OUT/phase1.tgz --exclude='*.pt' --exclude='*.last' -C /tmp runs logs 2>/dev/null
FT="--device cuda --augment --crop-scale 0.5"
jobs2=/tmp/jobs2; : > $jobs2
for s in 0 1 2; do
  P="$R/p_s$s.pt --data $D $FT --seed $s"
  echo "$RT compress $P --ratio 0.7 --epochs 120 --out $R/c70_A_s$s.pt" >> $jobs2
  echo "$RT compress $P --ratio 0.7 --distill --epochs 36 --out $R/c70_B_s$s.pt" >> $jobs2
  echo "$RT compress $P --ratio 0.7 --distill --epochs 36 --lr 0.05 --schedule onecycle --out $R/c70_C_s$s.pt" >> $jobs2
  echo "$RT compress $P --ratio 0.7 --epochs 150 --lr 0.05 --schedule onecycle --out $R/c70_D_s$s.pt" >> $jobs2
  echo "$RT compress $P --ratio 0.7 --criterion l1 --loss ce --distill --epochs 36 --out $R/c70_Bl1_s$s.pt" >> $jobs2
  echo "$RT compress $P --ratio 0.8 --epochs 200 --out $R/c80_A_s$s.pt" >> $jobs2
  echo "$RT compress $P --ratio 0.8 --distill --epochs 75 --out $R/c80_B_s$s.pt" >> $jobs2
done
(while sleep 45; do tar czf $OUT/partial.tgz --exclude="*.pt" --exclude="*.last" -C /tmp runs logs 2>/dev/null; done) &
t0=$(date +%s)
cat -n $jobs2 | xargs -P 16 -L 1 bash -c 'n=$0; "$@" > /tmp/logs/j2_$n.log 2>&1; echo "job2 $n rc=$? $(date +%T)"'
echo "phase2 $(( $(date +%s) - t0 )) s"
tar czf $OUT/phase2.tgz --exclude='*.pt' --exclude='*.last' -C /tmp runs logs 2>/dev/null
ls $R | head -100
