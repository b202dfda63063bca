#!/bin/bash
# last call: join + install cuDNN BSA, check it against our reference, then bench_attention with its rows
T0=$(date +%s)
export TRITON_INTERPRET=0
E=$(bash .gpu/cudnn/call4/install.sh 2> $OUT/install.txt) && eval "$E" || { cat $OUT/install.txt; exit 1; }
cat $OUT/install.txt; echo "install after $(( $(date +%s) - T0 )) s"
export PYTHONPATH=$PYTHONPATH:$PWD
timeout -k 3 -s INT 60 python3 benchmarks/cudnn_block_sparse.py > $OUT/cudnn_check.txt 2>&1
echo "check rc $? after $(( $(date +%s) - T0 )) s"; tail -c 1500 $OUT/cudnn_check.txt
timeout -k 3 -s INT 420 python3 -u benchmarks/bench_attention.py --sizes 720p,544p --no-check --out $OUT/bench_attention.json > $OUT/bench_attention_log.txt 2>&1
echo "bench rc $? after $(( $(date +%s) - T0 )) s"; tail -c 6000 $OUT/bench_attention_log.txt
