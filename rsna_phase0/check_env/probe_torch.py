"""Subprocess worker: torch and GPU facts, printed as one JSON line prefixed with `RSNA_PROBE `.

Run as a script by facts.py (never imported), so that a missing torch, a hung driver or a crash in CUDA
initialisation costs a timeout in a child process instead of hanging or killing check-env.
"""

import json
import sys

PREFIX = "RSNA_PROBE "


def emit(payload: dict) -> None:
    print(PREFIX + json.dumps(payload), flush=True)


def gpu_facts(torch, index: int) -> dict:
    try:
        props = torch.cuda.get_device_properties(index)
        return {
            "index": index,
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "sm_count": props.multi_processor_count,
        }
    except Exception as exc:  # one dead GPU must not hide the others
        return {"index": index, "error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    try:
        import torch
    except Exception as exc:
        emit({"error": f"import torch failed: {type(exc).__name__}: {exc}"})
        return
    facts = {"version": torch.__version__, "cuda": torch.version.cuda, "path": torch.__file__}
    try:
        facts["cudnn"] = torch.backends.cudnn.version()
    except Exception as exc:
        facts["cudnn"] = None
        facts["cudnn_error"] = f"{type(exc).__name__}: {exc}"
    try:
        facts["cuda_available"] = bool(torch.cuda.is_available())
        facts["arch_list"] = list(torch.cuda.get_arch_list()) if torch.version.cuda else []
        count = torch.cuda.device_count() if facts["cuda_available"] else 0
        facts["gpus"] = [gpu_facts(torch, i) for i in range(count)]
    except Exception as exc:
        facts.setdefault("cuda_available", False)
        facts.setdefault("arch_list", [])
        facts["gpus"] = []
        facts["cuda_error"] = f"{type(exc).__name__}: {exc}"
    emit(facts)


if __name__ == "__main__":
    main()
    sys.exit(0)
