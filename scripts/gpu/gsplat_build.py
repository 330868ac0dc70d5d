"""Build gsplat's CUDA extension (what its first use compiles) and record how long it took, or why it failed.

    python scripts/gpu/gsplat_build.py RECORD.json

Started in the background at setup, niced, so that the compile overlaps the GPU stages; the splat stage waits for
the record. ``MAX_JOBS`` (ninja's parallelism) and ``TORCH_EXTENSIONS_DIR`` come from the environment.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path


def main(record: Path) -> int:
    start = time.perf_counter()
    result: dict = {
        "max_jobs": os.environ.get("MAX_JOBS"),
        "torch_extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR"),
        "torch_cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST"),
    }
    try:
        import gsplat
        from gsplat.cuda._backend import _C  # importing the backend is what JIT-compiles it

        result.update(gsplat=gsplat.__version__, ok=_C is not None)
        if _C is None:
            result["error"] = "gsplat found no CUDA toolkit (nvcc) and disabled its CUDA backend"
    except BaseException as error:  # a failing compile can surface as SystemExit
        traceback.print_exc()
        result.update(ok=False, error=f"{type(error).__name__}: {str(error).strip()[-600:]}")
    result["compile_s"] = round(time.perf_counter() - start, 1)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, record)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
