#!/bin/bash
# Joins the wheel parts (call1..call4, see PLAN.md), checks their sha256, installs them with pip --target
# /tmp/cudnnfe and smoke-tests cuDNN's block-sparse attention on the GPU. Diagnostics go to stderr; stdout is one
# line, the export to eval. Usage (repo root, last call):
#   E=$(bash .gpu/cudnn/call4/install.sh) && eval "$E" || exit 1
# Idempotent: on a machine where it already ran (still warm), it only re-runs the smoke test.
here=$(cd "$(dirname "$0")" && pwd)
T=/tmp/cudnnfe
# ``nvidia_cutlass_dsl_packages.pth`` would add <nvidia_cutlass_dsl>/dsl_packages (it holds ``cutlass``); no .pth
# is read under --target / PYTHONPATH, so the path is named here
PP="$T:$T/nvidia_cutlass_dsl/dsl_packages"
log() { echo "[cudnn install] $*" >&2; }
if [ ! -f "$T/.installed" ]; then
  bash "$here/part.sh" || exit 1
  missing=""
  for p in aa ab ac ad; do [ -f /tmp/cudnn_parts/cudnn_wheels.tar.part-$p ] || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    log "missing parts:$missing (aa..ad come with call1..call4; a cold machine lost /tmp: redo those calls)"
    exit 1
  fi
  W=/tmp/cudnn_wheels
  rm -rf "$W" && mkdir -p "$W" || exit 1
  cat /tmp/cudnn_parts/cudnn_wheels.tar.part-a? | tar xf - -C "$W" || { log "joining the parts failed"; exit 1; }
  (cd "$W" && sha256sum -c --quiet "$here/sha256sums") >&2 || { log "sha256 mismatch"; exit 1; }
  wheels=$(ls "$W"/*.whl | grep -v typing_extensions)
  # apache-tvm-ffi needs typing-extensions >= 4.13: the image's own is used unless it is older
  python3 -c 'import importlib.metadata as m, sys; v = tuple(int(x) for x in m.version("typing_extensions").split(".")[:2]); sys.exit(v < (4, 13))' 2>/dev/null \
    || { log "image typing-extensions < 4.13 or absent: installing 4.16"; wheels="$wheels $(ls "$W"/typing_extensions-*.whl)"; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$T" $wheels >&2 \
    || { log "pip install failed"; exit 1; }
  touch "$T/.installed"
  log "installed into $T: $(ls "$W" | tr '\n' ' ')"
fi
PYTHONPATH="$PP${PYTHONPATH:+:$PYTHONPATH}" python3 - >&2 <<'PY' || { log "smoke test failed"; exit 1; }
import time
t0 = time.perf_counter()
import torch
import cudnn, cutlass, tvm_ffi
from cudnn import block_sparse_attention_forward
from cudnn.block_sparse_attention import _interface  # noqa: F401  (CuTe DSL kernels: the expensive import)
t1 = time.perf_counter()
try:  # the cuDNN library itself (torch's nvidia-cudnn-cu13); BSA does not use it
    backend = cudnn.backend_version()
except Exception as e:  # noqa: BLE001
    backend = f"n/a ({type(e).__name__})"
print(f"[cudnn smoke] cudnn frontend {cudnn.__version__} (backend {backend}), cutlass-dsl {cutlass.__version__}, "
      f"tvm_ffi {tvm_ffi.__version__}, torch {torch.__version__}; imports {t1 - t0:.1f} s", flush=True)
# every query block attends to all key blocks: must equal dense SDPA; N=300 leaves a partial last block
q, k, v = (torch.randn(1, 2, 300, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
idx = torch.arange(3, device="cuda", dtype=torch.int32).expand(1, 2, 3, 3).contiguous()
cnt = torch.full((1, 2, 3), 3, device="cuda", dtype=torch.int32)
out = block_sparse_attention_forward(q, k, v, idx, None, None, cnt, sparse_block_size=128,
                                     allow_empty_block_nums=True)["o_tensor"]
torch.cuda.synchronize()
err = (out.float() - torch.nn.functional.scaled_dot_product_attention(q, k, v).float()).abs().max().item()
print(f"[cudnn smoke] {torch.cuda.get_device_name()}: first BSA call (JIT) {time.perf_counter() - t1:.1f} s, "
      f"max abs err vs SDPA {err:.1e}", flush=True)
assert err < 2e-2, err
PY
echo "export PYTHONPATH=$PP\${PYTHONPATH:+:\$PYTHONPATH}"
