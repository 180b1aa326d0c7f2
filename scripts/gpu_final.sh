#!/usr/bin/env bash
# One device call for the session's last evidence: W3 with --http-workers, then the process-backend matrix
# (reduced) and kill -9 under load. Everything under $OUT is bundled into $OUT/all.tgz at the end (the device
# tool brings back at most 8 files), each part bounded so the bundle is always written.
export OUT=${OUT:-/tmp/out}
CONFIGS="${CONFIGS:-hw8 hw4}" DUR=${DUR:-10} WARM=${WARM:-2} timeout "${W3_LIMIT:-300}" bash scripts/gpu_w3.sh 2>&1 \
  | grep -v "^\s*$" | tee "$OUT/w3_final.txt" | grep -E "^(==|W3|W5|stages|server exit)|python3"
SKIP_TESTS=1 SECS=${SECS:-3} \
  MATRIX="${MATRIX:-resnet18 8 thread 1;resnet18 8 process 1 2 4;resnet50 64 thread 1;resnet50 64 process 1 2 4}" \
  MATRIX_MPS="${MATRIX_MPS:-resnet18 8 process 2 4}" timeout "${PROC_LIMIT:-200}" bash scripts/gpu_process.sh \
  > "$OUT/process_final.txt" 2>&1
tail -25 "$OUT/process_final.txt"
tar czf /tmp/all.tgz -C "$OUT" . && mv /tmp/all.tgz "$OUT/all.tgz"
find "$OUT" -type f ! -name all.tgz ! -name w3_final.txt ! -name process_final.txt -delete
