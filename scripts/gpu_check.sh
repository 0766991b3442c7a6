#!/usr/bin/env bash
# On a machine with a CUDA GPU whose python3 already holds torch and triton (the lent H100/H200):
# install retquant in place, then run the named stages, each logged to $OUT/<stage>.log.
#
#   bash scripts/gpu_check.sh env triton-tests bench-gpu cpu-tests bench-cpu
#
# Stages: env (GPU, driver, CPU flags, versions), all-tests (the whole suite), triton-tests (the Triton tests on CUDA tensors,
# no interpreter: bit-exact against the integer spec), bench-gpu (python -m bench.gpu, JSON
# too), cpu-tests (the C++ kernel tests on this machine's CPU, every ISA it has), bench-cpu
# (python -m bench.cpu --threads 2 with each ISA the CPU has). fla, when wanted and the machine
# has no package index, comes as wheels in .whl/ (`pip download --no-deps -d .whl fla-core
# flash-linear-attention` on a machine that has one); they are installed to /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/retquant_gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

stage_env() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    lscpu | grep -E 'Model name|^CPU\(s\)'
    grep -o 'avx512_vnni\|avx512_bf16\|avx512f\|avx2\|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' '
    echo
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
}

install() {
    if compgen -G ".whl/*.whl" >/dev/null; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || return 1
        export PYTHONPATH=/tmp/site
    fi
    $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || return 1
}

stage_triton_tests() {
    # the spec tests too: on CUDA tensors they check that the spec itself does not change with the device
    $PY -m pytest -p no:cacheprovider tests/test_triton_backend.py tests/test_triton_compile.py \
        tests/test_bench_gpu.py tests/test_quant_primitives.py tests/test_int_chunk_spec.py -ra
}

stage_bench_gpu() {
    $PY -m bench.gpu --json "$OUT/bench_gpu.json"
}

stage_cpu_tests() {
    $PY -c "from retquant.backends import cpu_extension as c; c.ops(); print('extension built; ISAs', c.cpu_isas())"
    $PY -m pytest -p no:cacheprovider -n 8 tests/test_cpu_backend.py tests/test_cpu_float_kernel.py \
        tests/test_cpu_quantize.py tests/test_cpu_caches.py tests/test_decoder.py tests/test_int8_linear.py \
        tests/test_ste_tensor.py tests/test_quant_linear.py tests/test_bad_input.py tests/test_dispatch.py \
        tests/test_autograd.py
}

stage_all_tests() {
    # the whole suite on this machine: Triton tests on the GPU, CPU kernel tests on its ISAs
    $PY -c "from retquant.backends import cpu_extension as c; c.ops(); print('extension built; ISAs', c.cpu_isas())"
    $PY -m pytest -p no:cacheprovider -n 16 tests
}

stage_bench_cpu() {
    for isa in $($PY -c "from retquant.backends import cpu_extension as c; print(' '.join(c.cpu_isas()))"); do
        [ "$isa" = portable ] && continue
        echo "--- RETQUANT_CPU_ISA=$isa"
        RETQUANT_CPU_ISA=$isa $PY -m bench.cpu --threads 2
    done
}

install >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }  # no pipe: PYTHONPATH must reach the stages
status=0
for s in "$@"; do
    echo "=== $s"
    "stage_${s//-/_}" 2>&1 | tee "$OUT/$s.log"
    rc=${PIPESTATUS[0]}
    echo "=== $s rc=$rc"
    [ "$rc" = 0 ] || status=1
done
exit $status
