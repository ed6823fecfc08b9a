"""Idempotent source fixes that make MinkowskiEngine 0.5.4 compile on today's toolchains.

Facts behind each fix: shared/minkowski-engine.md ("Source fixes each toolchain needs"). Each fix is chosen by
the toolchain (Python, CUDA, torch, GCC versions) and reports one of:
  applied          it changed the tree;
  already present  the tree already has it (the users' fork carries some; a second run finds all of them);
  not needed       this toolchain does not need it (e.g. any CUDA fix in a CPU-only build).
A fix whose anchor text is missing raises FixError naming the file and the text: a changed source must fail
loudly, never be half-patched. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from installers.minkowski.errors import FixError
from rsna_phase0.core.versions import version_tuple

APPLIED, PRESENT, NOT_NEEDED = "applied", "already present", "not needed"
# Bumped whenever a fix's edit changes: it is part of the wheel cache key.
FIXER_REVISION = 1


@dataclass(frozen=True)
class BuildTarget:
    """The toolchain facts that decide which fixes a build needs."""

    python: str  # "3.11"
    cpu_only: bool
    torch: str = ""  # "2.13.0+cpu"
    nvcc: str | None = None  # "13.0"
    gcc: str | None = None  # "12.2.0"; None when unknown or not GCC


@dataclass(frozen=True)
class FixOutcome:
    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class Fix:
    name: str
    why: str
    needed: Callable[[BuildTarget], bool]
    apply: Callable[[Path], bool]  # True when it changed the tree, False when all of it was already there


# ---- text edits (preserve the file's bytes except the edit) --------------------------------------------------


def _read(path: Path) -> str:
    if not path.is_file():
        raise FixError(f"{path}: file missing; the MinkowskiEngine source is not the 0.5.4 layout this fixer knows")
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def _write(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def _has_line(text: str, line: str) -> bool:
    return any(existing.strip() == line.strip() for existing in text.splitlines())


def _insert_line(path: Path, line: str, anchor: str, *, after: bool = True) -> bool:
    """Insert `line` next to the first line equal (stripped) to `anchor`, unless the line is already there."""
    text = _read(path)
    if _has_line(text, line):
        return False
    lines = text.splitlines(keepends=True)
    for index, existing in enumerate(lines):
        if existing.strip() == anchor.strip():
            newline = "\r\n" if existing.endswith("\r\n") else "\n"
            lines.insert(index + 1 if after else index, line + newline)
            _write(path, "".join(lines))
            return True
    raise FixError(f"{path}: anchor line {anchor!r} not found; cannot add {line!r} (source changed?)")


def _regex_edit(path: Path, *, done: str, pattern: str, replace: Callable[[re.Match], str], what: str) -> bool:
    """Replace every match of `pattern` unless `done` (a regex) shows the fix is already in."""
    text = _read(path)
    if re.search(done, text, re.S):
        return False
    new, count = re.subn(pattern, replace, text, flags=re.S | re.M)
    if count == 0:
        raise FixError(f"{path}: cannot find {what} (pattern {pattern!r}); source changed, refusing to half-patch")
    _write(path, new)
    return True


# ---- the fixes ----------------------------------------------------------------------------------------------

_COLLECTIONS_FILES = (
    "MinkowskiEngine/MinkowskiCommon.py",
    "MinkowskiEngine/MinkowskiCoordinateManager.py",
    "MinkowskiEngine/MinkowskiKernelGenerator.py",
    "MinkowskiEngine/MinkowskiTensorField.py",
    "MinkowskiEngine/utils/quantization.py",
)
# Abstract base classes that Python 3.10 removed from the `collections` namespace.
_ABC_NAMES = {"Sequence", "Mapping", "MutableMapping", "Iterable", "Iterator", "Callable", "Set", "MutableSet"}
_FROM_COLLECTIONS = re.compile(r"^(?P<indent>[ \t]*)from collections import (?P<names>[^\n(]+?)[ \t]*$", re.M)


def _split_collections_import(match: re.Match) -> str:
    names = [name.strip() for name in match.group("names").split(",")]
    abcs = [name for name in names if name.split(" as ")[0] in _ABC_NAMES]
    if not abcs:
        return match.group(0)
    rest = [name for name in names if name not in abcs]
    indent = match.group("indent")
    lines = [f"{indent}from collections import {', '.join(rest)}"] if rest else []
    lines.append(f"{indent}from collections.abc import {', '.join(abcs)}")
    return "\n".join(lines)


def _fix_collections_abc(root: Path) -> bool:
    changed = False
    for rel in _COLLECTIONS_FILES:
        path = root / rel
        text = _read(path)
        new = _FROM_COLLECTIONS.sub(_split_collections_import, text)
        if new != text:
            _write(path, new)
            changed = True
        elif "collections.abc" not in text:
            raise FixError(f"{path}: neither `from collections import Sequence` nor `collections.abc` found")
    # Any other module of the package importing a removed name would fail at import time just the same.
    for path in sorted((root / "MinkowskiEngine").rglob("*.py")):
        text = _read(path)
        new = _FROM_COLLECTIONS.sub(_split_collections_import, text)
        if new != text:
            _write(path, new)
            changed = True
    return changed


# (file, header, anchor line the include goes after); the fork already carries these (shared notes).
_THRUST_INCLUDES = (
    ("src/3rdparty/concurrent_unordered_map.cuh", "thrust/execution_policy.h", "#include <thrust/count.h>"),
    ("src/convolution_kernel.cuh", "thrust/execution_policy.h", '#include "types.hpp"'),
    ("src/coordinate_map_gpu.cu", "thrust/remove.h", "#include <thrust/sort.h>"),
    ("src/coordinate_map_gpu.cu", "thrust/unique.h", "#include <thrust/sort.h>"),
    ("src/spmm.cu", "thrust/execution_policy.h", "#include <cusparse.h>"),
    ("src/spmm.cu", "thrust/reduce.h", "#include <cusparse.h>"),
    ("src/spmm.cu", "thrust/sort.h", "#include <cusparse.h>"),
)


def _fix_thrust_includes(root: Path) -> bool:
    changed = False
    for rel, header, anchor in _THRUST_INCLUDES:
        changed |= _insert_line(root / rel, f"#include <{header}>", anchor)
    return changed


_NVCC_FLAGS_ANCHOR = 'NVCC_FLAGS += ["--expt-relaxed-constexpr", "--expt-extended-lambda"]'


def _fix_nvtx_disable(root: Path) -> bool:
    path = root / "setup.py"
    if "NVTX_DISABLE" in _read(path):
        return False
    return _insert_line(path, 'CC_FLAGS += ["-DNVTX_DISABLE"]; NVCC_FLAGS += ["-DNVTX_DISABLE"]', _NVCC_FLAGS_ANCHOR)


def _fix_aten_tensor_include(root: Path) -> bool:
    return _insert_line(
        root / "src/spmm.cu", "#include <ATen/core/Tensor.h>", "#include <ATen/cuda/CUDAContext.h>", after=False
    )


def _fix_unary_function(root: Path) -> bool:
    return _regex_edit(
        root / "src/coordinate_map_functors.cuh",
        done=r"struct find_coordinate\s*\{",
        pattern=r"struct find_coordinate\s*:\s*public\s+thrust::unary_function<[^{]*>\s*\{",
        replace=lambda m: "struct find_coordinate {",
        what="`struct find_coordinate : public thrust::unary_function<...> {`",
    )


_CCCL_MARKER = "# rsna_phase0 fix: CUDA 13 moved thrust/cub under include/cccl"
_CCCL_BLOCK = f"""{_CCCL_MARKER}, which host g++ does not search.
if not CPU_ONLY:
    from torch.utils.cpp_extension import CUDA_HOME as _TORCH_CUDA_HOME

    _cccl = os.path.join(CUDA_HOME or _TORCH_CUDA_HOME or "", "include", "cccl")
    if os.path.isdir(_cccl):
        include_dirs.append(_cccl)
"""


def _fix_cccl_include_dir(root: Path) -> bool:
    path = root / "setup.py"
    text = _read(path)
    if _CCCL_MARKER in text:
        return False
    anchor = re.search(r"^ext_modules = \[", text, re.M)
    if anchor is None or "include_dirs" not in text[anchor.start() :]:
        raise FixError(f"{path}: anchor `ext_modules = [` (followed by include_dirs) not found; source changed")
    _write(path, text[: anchor.start()] + _CCCL_BLOCK + "\n" + text[anchor.start() :])
    return True


_PREFETCH_FILE = "src/3rdparty/concurrent_unordered_map.cuh"
_PREFETCH_HELPER = """
// rsna_phase0 fix: CUDA 13 replaced cudaMemPrefetchAsync's device id with a cudaMemLocation and flags.
static inline cudaError_t rsna_mem_prefetch(const void* ptr, size_t bytes, int device, cudaStream_t stream)
{
#if defined(CUDART_VERSION) && CUDART_VERSION >= 13000
  cudaMemLocation location = {};
  location.type = cudaMemLocationTypeDevice;
  location.id   = device;
  return cudaMemPrefetchAsync(ptr, bytes, location, 0, stream);
#else
  return cudaMemPrefetchAsync(ptr, bytes, device, stream);
#endif
}
"""


def _fix_prefetch(root: Path) -> bool:
    path = root / _PREFETCH_FILE
    text = _read(path)
    if "rsna_mem_prefetch(const void*" in text:
        return False
    anchor = "#include <type_traits>"
    calls = len(re.findall(r"\bcudaMemPrefetchAsync\(", text))
    if calls == 0 or anchor not in text:
        raise FixError(f"{path}: expected cudaMemPrefetchAsync calls and the line {anchor!r}; source changed")
    text = re.sub(r"\bcudaMemPrefetchAsync\(", "rsna_mem_prefetch(", text)
    text = text.replace(anchor, anchor + "\n" + _PREFETCH_HELPER, 1)
    _write(path, text)
    return True


def _check_no_other_prefetch(root: Path) -> None:
    """A call site this fixer does not know about would break the CUDA 13 build after minutes of compiling."""
    for path in sorted((root / "src").rglob("*")):
        if (
            path.suffix in {".cu", ".cuh", ".hpp", ".cpp", ".h"}
            and path.as_posix() != (root / _PREFETCH_FILE).as_posix()
        ):
            if re.search(r"\bcudaMemPrefetchAsync\(", path.read_text(encoding="utf-8", errors="replace")):
                raise FixError(f"{path}: unexpected cudaMemPrefetchAsync call; extend the prefetch-mem-location fix")


def _fix_prefetch_all(root: Path) -> bool:
    changed = _fix_prefetch(root)
    _check_no_other_prefetch(root)
    return changed


def _fix_to_address(root: Path) -> bool:
    # Assigning the unique_ptr (with its std::function deleter) to the shared_ptr makes nvcc >= 12.4 with
    # libstdc++ 12 see two std::__to_address overloads (ME #596); building the shared_ptr explicitly avoids it.
    return _regex_edit(
        root / "src/coordinate_map_gpu.cuh",
        done=r"created_map\.release\(\)",
        pattern=r"m_map = map_type::create\((?P<args>[^;]*?)\);",
        replace=lambda m: (
            f"auto created_map = map_type::create({m.group('args')});\n"
            "      auto const map_deleter = created_map.get_deleter();\n"
            "      m_map = std::shared_ptr<map_type>(created_map.release(), map_deleter);"
        ),
        what="`m_map = map_type::create(...);` in reserve()",
    )


def _cuda(target: BuildTarget, at_least: tuple[int, ...]) -> bool:
    return not target.cpu_only and version_tuple(target.nvcc) >= at_least


def _gcc_12_or_unknown(target: BuildTarget) -> bool:
    return target.gcc is None or version_tuple(target.gcc) >= (12,)


FIXES: tuple[Fix, ...] = (
    Fix(
        "collections-abc",
        "Python >= 3.10 removed collections.Sequence",
        lambda t: version_tuple(t.python) >= (3, 10),
        _fix_collections_abc,
    ),
    Fix(
        "thrust-includes",
        "CUDA 12 thrust no longer includes these transitively",
        lambda t: _cuda(t, (12,)),
        _fix_thrust_includes,
    ),
    Fix(
        "nvtx-disable",
        "CUDA >= 12.4: cub's NVTX clashes with cudf's nvtx3",
        lambda t: _cuda(t, (12, 4)),
        _fix_nvtx_disable,
    ),
    Fix(
        "aten-tensor-include",
        "torch >= 2.1 headers: incomplete at::Tensor in spmm.cu",
        lambda t: not t.cpu_only and version_tuple(t.torch) >= (2, 1),
        _fix_aten_tensor_include,
    ),
    Fix(
        "to-address-shared-ptr",
        "GCC 12 + CUDA >= 12.4: ambiguous std::__to_address (ME #596)",
        lambda t: _cuda(t, (12, 4)) and _gcc_12_or_unknown(t),
        _fix_to_address,
    ),
    Fix(
        "thrust-unary-function",
        "CUDA 13 / CCCL 3 removed thrust::unary_function",
        lambda t: _cuda(t, (13,)),
        _fix_unary_function,
    ),
    Fix(
        "cccl-include-dir", "CUDA 13 moved thrust/cub to include/cccl", lambda t: _cuda(t, (13,)), _fix_cccl_include_dir
    ),
    Fix(
        "prefetch-mem-location",
        "CUDA 13 changed cudaMemPrefetchAsync's signature",
        lambda t: _cuda(t, (13,)),
        _fix_prefetch_all,
    ),
)


def needed_fixes(target: BuildTarget) -> list[str]:
    """Names of the fixes this toolchain needs: after a successful fix run, exactly the applied + present ones."""
    return [fix.name for fix in FIXES if fix.needed(target)]


def apply_fixes(root: Path, target: BuildTarget) -> list[FixOutcome]:
    """Apply every fix the toolchain needs to the source tree at `root` (idempotent)."""
    root = Path(root)
    if not (root / "setup.py").is_file() or not (root / "src").is_dir():
        raise FixError(f"{root}: not a MinkowskiEngine source tree (setup.py and src/ expected)")
    outcomes = []
    for fix in FIXES:
        if not fix.needed(target):
            outcomes.append(FixOutcome(fix.name, NOT_NEEDED, fix.why))
            continue
        changed = fix.apply(root)
        outcomes.append(FixOutcome(fix.name, APPLIED if changed else PRESENT, fix.why))
    return outcomes
