"""installers/build_minkowski.py and its helpers: source fixes, cache keys, job sizing, errors, wheel metadata.

Nothing here compiles MinkowskiEngine (`make setup` does that once); the fixer runs on small trees holding the
real anchor lines of both source shapes (PyPI sdist, the users' fork) and on the real sdist when it is cached.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from installers.minkowski import build as bm
from installers.minkowski import fixes as fx
from installers.minkowski import source as ms
from installers.minkowski import toolchain as mt
from installers.minkowski import wheel as mw
from rsna_phase0.check_env.spec import load_spec

REPO = Path(__file__).resolve().parents[1]

CPU_311 = fx.BuildTarget(python="3.11", cpu_only=True, torch="2.13.0+cpu")
CUDA_121 = fx.BuildTarget(python="3.12", cpu_only=False, torch="2.4.0+cu121", nvcc="12.1", gcc="11.4.0")
CUDA_124_GCC12 = fx.BuildTarget(python="3.12", cpu_only=False, torch="2.4.0+cu124", nvcc="12.4", gcc="12.3.0")
CUDA_13 = fx.BuildTarget(python="3.12", cpu_only=False, torch="2.11.0+cu130", nvcc="13.0", gcc="12.3.0")
ALL_FIXES = [f.name for f in fx.FIXES]
SDIST_SHA = load_spec().minkowski.sdist_sha256

# ---- source trees holding the real anchor lines -------------------------------------------------------------

SETUP_PY = """import os
CPU_ONLY = False
CUDA_HOME = False
include_dirs = []
CC_FLAGS = []
NVCC_FLAGS = []
NVCC_FLAGS += ["--expt-relaxed-constexpr", "--expt-extended-lambda"]
FAST_MATH = False
{nvtx}
ext_modules = [
    dict(name="MinkowskiEngineBackend._C"),
]
setup_kwargs = dict(include_dirs=["src", "src/3rdparty", *include_dirs], ext_modules=ext_modules)
"""

FUNCTORS = """template <typename coordinate_type, typename map_type>
struct find_coordinate
    : public thrust::unary_function<uint32_t,
                                    thrust::pair<uint32_t, uint32_t>> {
  using mapped_type = typename map_type::mapped_type;
};
"""

RESERVE = """  inline void reserve(size_type size) {
    if (size > m_capacity) {
      m_map = map_type::create(
          compute_hash_table_size(size, m_hashtable_occupancy),
          m_unused_element, m_unused_key, m_hasher, m_equal, m_map_allocator);
      m_capacity = size;
    }
  }
"""

CONCURRENT_MAP = """#include <thrust/pair.h>
#include <thrust/count.h>
{fork_include}
#include <limits>
#include <type_traits>

  gdf_error prefetch(const int dev_id, cudaStream_t stream = 0)
  {{
      CUDA_TRY(
        cudaMemPrefetchAsync(m_hashtbl_values, m_capacity * sizeof(value_type), dev_id, stream));
    CUDA_TRY(cudaMemPrefetchAsync(this, sizeof(*this), dev_id, stream));
  }}
"""


def make_tree(root: Path, *, fork: bool) -> Path:
    """An sdist-shaped tree, or a fork-shaped one (thrust includes and NVTX_DISABLE already in)."""
    files = {
        "setup.py": SETUP_PY.format(nvtx='NVCC_FLAGS += ["-DNVTX_DISABLE"]' if fork else ""),
        "MinkowskiEngine/MinkowskiCommon.py": "from collections import Sequence\nimport numpy as np\n",
        "MinkowskiEngine/MinkowskiCoordinateManager.py": "import os\nfrom collections import Sequence\n",
        "MinkowskiEngine/MinkowskiKernelGenerator.py": "import math\nfrom collections import Sequence, namedtuple\n",
        "MinkowskiEngine/MinkowskiTensorField.py": "from collections import Sequence\nimport torch\n",
        "MinkowskiEngine/utils/quantization.py": "import torch\nfrom collections import Sequence\n",
        "MinkowskiEngine/utils/summary.py": "from collections import OrderedDict\n",
        "src/3rdparty/concurrent_unordered_map.cuh": CONCURRENT_MAP.format(
            fork_include="#include <thrust/execution_policy.h>" if fork else ""
        ),
        "src/convolution_kernel.cuh": '#include "math_functions.cuh"\n#include "types.hpp"\n'
        + ("#include <thrust/execution_policy.h>\n" if fork else ""),
        "src/coordinate_map_gpu.cu": "#include <thrust/sort.h>\n"
        + ("#include <thrust/remove.h>\n#include <thrust/unique.h>\n" if fork else ""),
        "src/spmm.cu": "#include <cusparse.h>\n"
        + (
            "#include <thrust/execution_policy.h>\n#include <thrust/reduce.h>\n#include <thrust/sort.h>\n"
            if fork
            else ""
        )
        + "\n#include <ATen/cuda/CUDAContext.h>\n",
        "src/coordinate_map_functors.cuh": FUNCTORS,
        "src/coordinate_map_gpu.cuh": RESERVE,
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def statuses(outcomes) -> dict[str, str]:
    return {o.name: o.status for o in outcomes}


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- fixer --------------------------------------------------------------------------------------------------


def test_needed_fixes_follow_the_toolchain():
    assert fx.needed_fixes(CPU_311) == ["collections-abc"]
    assert fx.needed_fixes(fx.BuildTarget(python="3.9", cpu_only=True)) == []
    assert fx.needed_fixes(CUDA_121) == ["collections-abc", "thrust-includes", "aten-tensor-include"]
    assert fx.needed_fixes(CUDA_124_GCC12) == [
        "collections-abc",
        "thrust-includes",
        "nvtx-disable",
        "aten-tensor-include",
        "to-address-shared-ptr",
    ]
    assert fx.needed_fixes(CUDA_13) == ALL_FIXES
    # a CUDA-13 toolkit is irrelevant to a CPU-only build
    assert fx.needed_fixes(fx.BuildTarget(python="3.12", cpu_only=True, nvcc="13.0")) == ["collections-abc"]


def test_sdist_tree_cuda13_all_applied_then_all_present(tmp_path):
    root = make_tree(tmp_path / "sdist", fork=False)
    first = statuses(fx.apply_fixes(root, CUDA_13))
    assert first == dict.fromkeys(ALL_FIXES, fx.APPLIED)
    after_first = snapshot(root)
    second = statuses(fx.apply_fixes(root, CUDA_13))
    assert second == dict.fromkeys(ALL_FIXES, fx.PRESENT)
    assert snapshot(root) == after_first  # idempotent: the second run changes nothing

    text = after_first
    assert "from collections.abc import Sequence" in text["MinkowskiEngine/MinkowskiCommon.py"]
    assert (
        "from collections import namedtuple\nfrom collections.abc import Sequence"
        in text["MinkowskiEngine/MinkowskiKernelGenerator.py"]
    )
    assert text["MinkowskiEngine/utils/summary.py"] == "from collections import OrderedDict\n"
    assert "unary_function" not in text["src/coordinate_map_functors.cuh"]
    assert "struct find_coordinate {" in text["src/coordinate_map_functors.cuh"]
    cmap = text["src/3rdparty/concurrent_unordered_map.cuh"]
    assert cmap.count("rsna_mem_prefetch(") == 2 + 1  # both call sites and the helper's definition
    assert cmap.count("cudaMemPrefetchAsync(") == 2  # only inside the helper, once per CUDA version
    assert "cudaMemLocation" in cmap
    assert "created_map.release()" in text["src/coordinate_map_gpu.cuh"]
    spmm = text["src/spmm.cu"]
    assert spmm.index("#include <ATen/core/Tensor.h>") < spmm.index("#include <ATen/cuda/CUDAContext.h>")
    for header in ("thrust/execution_policy.h", "thrust/reduce.h", "thrust/sort.h"):
        assert f"#include <{header}>" in spmm
    setup = text["setup.py"]
    assert "-DNVTX_DISABLE" in setup and '"include", "cccl"' in setup
    compile(setup, "setup.py", "exec")  # the patched setup.py is still valid Python


def test_patched_setup_adds_cccl_only_for_cuda_builds(tmp_path):
    root = make_tree(tmp_path / "t", fork=False)
    fx.apply_fixes(root, CUDA_13)
    cuda_home = tmp_path / "cuda"
    (cuda_home / "include" / "cccl").mkdir(parents=True)
    code = (root / "setup.py").read_text()
    for cpu_only, expected in ((False, [str(cuda_home / "include" / "cccl")]), (True, [])):
        namespace: dict = {}
        exec(
            compile(
                code.replace("CPU_ONLY = False", f"CPU_ONLY = {cpu_only}").replace(
                    "CUDA_HOME = False", f"CUDA_HOME = {str(cuda_home)!r}"
                ),
                "setup.py",
                "exec",
            ),
            namespace,
        )
        assert namespace["include_dirs"] == expected


def test_fork_tree_finds_its_own_fixes_present(tmp_path):
    root = make_tree(tmp_path / "fork", fork=True)
    result = statuses(fx.apply_fixes(root, CUDA_13))
    assert result["thrust-includes"] == fx.PRESENT
    assert result["nvtx-disable"] == fx.PRESENT
    assert {k for k, v in result.items() if v == fx.APPLIED} == set(ALL_FIXES) - {"thrust-includes", "nvtx-disable"}
    assert (root / "setup.py").read_text().count("NVTX_DISABLE") == 1  # not added a second time
    assert statuses(fx.apply_fixes(root, CUDA_13)) == dict.fromkeys(ALL_FIXES, fx.PRESENT)


def test_cpu_build_touches_only_python_files(tmp_path):
    root = make_tree(tmp_path / "t", fork=False)
    before = snapshot(root)
    result = statuses(fx.apply_fixes(root, CPU_311))
    assert result == {name: fx.APPLIED if name == "collections-abc" else fx.NOT_NEEDED for name in ALL_FIXES}
    changed = {rel for rel, text in snapshot(root).items() if before[rel] != text}
    assert changed == {
        "MinkowskiEngine/MinkowskiCommon.py",
        "MinkowskiEngine/MinkowskiCoordinateManager.py",
        "MinkowskiEngine/MinkowskiKernelGenerator.py",
        "MinkowskiEngine/MinkowskiTensorField.py",
        "MinkowskiEngine/utils/quantization.py",
    }


@pytest.mark.parametrize(
    ("rel", "remove", "fix_target"),
    [
        ("src/spmm.cu", "#include <cusparse.h>\n", CUDA_121),
        ("src/coordinate_map_functors.cuh", "    : public thrust::unary_function<uint32_t,\n", CUDA_13),
        ("src/coordinate_map_gpu.cuh", "      m_map = map_type::create(\n", CUDA_124_GCC12),
        ("setup.py", 'NVCC_FLAGS += ["--expt-relaxed-constexpr", "--expt-extended-lambda"]\n', CUDA_124_GCC12),
        ("MinkowskiEngine/MinkowskiCommon.py", "from collections import Sequence\n", CPU_311),
        ("src/3rdparty/concurrent_unordered_map.cuh", "#include <type_traits>\n", CUDA_13),
    ],
)
def test_missing_anchor_fails_loudly_naming_the_file(tmp_path, rel, remove, fix_target):
    root = make_tree(tmp_path / "t", fork=False)
    path = root / rel
    assert remove in path.read_text()
    path.write_text(path.read_text().replace(remove, ""))
    with pytest.raises(fx.FixError) as info:
        fx.apply_fixes(root, fix_target)
    assert str(path) in str(info.value)


def test_unknown_prefetch_call_site_fails(tmp_path):
    root = make_tree(tmp_path / "t", fork=False)
    (root / "src/extra.cu").write_text("void f() { cudaMemPrefetchAsync(p, n, 0, s); }\n")
    with pytest.raises(fx.FixError, match="extra.cu"):
        fx.apply_fixes(root, CUDA_13)


def test_not_a_source_tree(tmp_path):
    with pytest.raises(fx.FixError, match="not a MinkowskiEngine source tree"):
        fx.apply_fixes(tmp_path, CPU_311)


def _real_sdist() -> Path | None:
    for candidate in (
        bm.DEFAULT_CACHE_DIR / "sources" / "MinkowskiEngine-0.5.4.tar.gz",
        REPO / ".carry" / "MinkowskiEngine-0.5.4.tar.gz",
    ):
        if candidate.is_file() and ms.sha256_file(candidate) == SDIST_SHA:
            return candidate
    return None


@pytest.mark.skipif(_real_sdist() is None, reason="the 0.5.4 sdist is not cached here (make setup downloads it)")
@pytest.mark.parametrize("target", [CPU_311, CUDA_121, CUDA_124_GCC12, CUDA_13], ids=["cpu", "cu121", "cu124", "cu13"])
def test_real_sdist_fixes_apply_and_are_idempotent(tmp_path, target):
    with tarfile.open(_real_sdist()) as tar:
        tar.extractall(tmp_path, filter="data")
    root = tmp_path / "MinkowskiEngine-0.5.4"
    needed = fx.needed_fixes(target)
    assert statuses(fx.apply_fixes(root, target)) == {
        name: fx.APPLIED if name in needed else fx.NOT_NEEDED for name in ALL_FIXES
    }
    assert statuses(fx.apply_fixes(root, target)) == {
        name: fx.PRESENT if name in needed else fx.NOT_NEEDED for name in ALL_FIXES
    }
    for py in (root / "MinkowskiEngine").rglob("*.py"):
        compile(py.read_text(), str(py), "exec")
    compile((root / "setup.py").read_text(), "setup.py", "exec")


# ---- cache keys, job sizing ----------------------------------------------------------------------------------

KEY_ARGS = dict(
    source_id=SDIST_SHA,
    fixes=["collections-abc"],
    python_tag="cp311",
    torch="2.13.0+cpu",
    torch_cuda=None,
    cuda_archs=None,
    cpu_only=True,
    blas="openblas",
    me_version=load_spec().minkowski.version,
)


def test_cache_key_is_stable_and_covers_every_binary_input():
    key = bm.cache_key(**KEY_ARGS)
    assert key == bm.cache_key(**dict(KEY_ARGS))
    assert bm.cache_key(**{**KEY_ARGS, "fixes": ["b", "a"]}) == bm.cache_key(**{**KEY_ARGS, "fixes": ["a", "b"]})
    changes = {
        "source_id": "829bf19859c650776f9466dd2b14b44a91eb1fa9",
        "fixes": ["collections-abc", "thrust-includes"],
        "python_tag": "cp312",
        "torch": "2.4.0",
        "torch_cuda": "12.1",
        "cuda_archs": "7.5",
        "cpu_only": False,
        "blas": "mkl",
        "me_version": "0.5.5",
        "fixer_revision": fx.FIXER_REVISION + 1,
    }
    keys = {bm.cache_key(**{**KEY_ARGS, name: value}) for name, value in changes.items()}
    assert key not in keys and len(keys) == len(changes)


def _toolchain(**overrides) -> mt.Toolchain:
    base = dict(
        python_exe=sys.executable,
        python="3.11",
        python_tag="cp311",
        torch="2.13.0+cpu",
        torch_cuda=None,
        cuda_available=False,
        gpu_archs=(),
        cuda_home=None,
        nvcc=None,
        cxx="/usr/bin/c++",
        gcc="12.2.0",
    )
    return mt.Toolchain(**{**base, **overrides})


def test_embedded_record_recomputes_its_own_key():
    source = ms.Source("sdist", SDIST_SHA, "https://example/x.tar.gz", "/x.tar.gz")
    record = bm.build_record(
        me_version="0.5.4",
        source=source,
        fixes=["collections-abc"],
        tc=_toolchain(),
        archs=None,
        cpu_only=True,
        blas="openblas",
    )
    assert record["cache_key"] == bm.cache_key(**KEY_ARGS) == bm.key_of_record(json.loads(json.dumps(record)))
    assert {
        "schema",
        "me_version",
        "source",
        "fixes",
        "python",
        "torch",
        "torch_cuda",
        "nvcc",
        "cuda_archs",
        "cpu_only",
        "blas",
        "built_at",
    } <= record.keys()
    assert record["source"] == {"kind": "sdist", "id": SDIST_SHA, "url": "https://example/x.tar.gz"}


@pytest.mark.parametrize(
    ("mem", "cores", "jobs"),
    [(24 * 1024**3, 2, 2), (4 * 10**9, 16, 1), (0, 8, 1), (100 * 10**9, 16, 16), (10 * 10**9, 16, 4), (None, 8, 2)],
)
def test_size_max_jobs(mem, cores, jobs):
    assert bm.size_max_jobs(mem, cores) == jobs


def test_mem_available_parsed_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemFree:         1000 kB\nMemAvailable:   24056084 kB\n")
    assert mt.mem_available_bytes(str(meminfo)) == 24056084 * 1024
    assert mt.mem_available_bytes(str(tmp_path / "missing")) is None


def test_archs_option_spec_default_and_cuda13_floor():
    tc = _toolchain(torch_cuda="12.1", nvcc="12.1", gpu_archs=("7.5",))
    assert bm.resolve_archs(None, "6.0;7.5;9.0", tc, cpu_only=True) is None
    assert bm.resolve_archs(None, "9.0;6.0;7.5", tc, cpu_only=False) == "6.0;7.5;9.0"
    assert bm.resolve_archs("8.6, 7.5", "6.0", tc, cpu_only=False) == "7.5;8.6"
    assert bm.resolve_archs("visible", "6.0", tc, cpu_only=False) == "7.5"
    with pytest.raises(bm.BuildError, match="expected compute capabilities"):
        bm.resolve_archs("sm_90", "6.0", tc, cpu_only=False)
    tc13 = _toolchain(torch_cuda="13.0", nvcc="13.0")
    assert bm.resolve_archs("9.0", "6.0", tc13, cpu_only=False) == "9.0"
    with pytest.raises(bm.BuildError, match="CUDA 13 dropped") as info:
        bm.resolve_archs(None, "6.0;7.0;7.5;9.0", tc13, cpu_only=False)
    assert "6.0;7.0" in str(info.value) and "--archs" in str(info.value)
    with pytest.raises(bm.BuildError, match="no GPU is visible"):
        bm.resolve_archs("visible", "6.0", tc13, cpu_only=False)


# ---- error messages -------------------------------------------------------------------------------------------


def _fake_cxx(tmp_path: Path, *, header_ok: bool) -> str:
    script = tmp_path / "fake-c++"
    script.write_text(f"#!/bin/sh\ncat >/dev/null\nexit {0 if header_ok else 1}\n")
    script.chmod(0o755)
    return str(script)


def test_error_no_compiler():
    with pytest.raises(bm.BuildError, match="no C\\+\\+ compiler") as info:
        mt.check_toolchain(_toolchain(cxx=None), cpu_only=True, blas="openblas")
    assert "apt-get install g++" in str(info.value)


def test_error_missing_blas_headers_names_the_packages(tmp_path):
    with pytest.raises(bm.BuildError) as info:
        mt.check_toolchain(_toolchain(cxx=_fake_cxx(tmp_path, header_ok=False)), cpu_only=True, blas="openblas")
    message = str(info.value)
    assert "libopenblas-dev" in message and "openblas-devel" in message and "conda" in message


def test_real_compiler_finds_cblas_here():
    cxx = mt.find_cxx()
    assert cxx is not None, "no C++ compiler on this machine"
    assert mt.blas_header_found(cxx, "openblas"), "cblas.h missing: apt-get install libopenblas-dev"


def test_error_nvcc_major_differs_from_torch(tmp_path):
    tc = _toolchain(cxx=_fake_cxx(tmp_path, header_ok=True), torch="2.4.0+cu121", torch_cuda="12.1", nvcc="13.0")
    with pytest.raises(bm.BuildError, match="major versions") as info:
        mt.check_toolchain(tc, cpu_only=False, blas="openblas")
    assert "13.0" in str(info.value) and "12.1" in str(info.value)
    mt.check_toolchain(_toolchain(cxx=tc.cxx, torch_cuda="12.1", nvcc="12.4"), cpu_only=False, blas="openblas")


def test_error_cuda_wanted_but_torch_is_cpu_only(tmp_path):
    with pytest.raises(bm.BuildError, match="--cpu-only"):
        mt.check_toolchain(_toolchain(cxx=_fake_cxx(tmp_path, header_ok=True)), cpu_only=False, blas="openblas")


def test_error_disk_full_before_building(tmp_path):
    with pytest.raises(bm.BuildError, match="GiB free"):
        mt.check_free_space(tmp_path / "not" / "yet", needed=1 << 62)
    mt.check_free_space(tmp_path, needed=1)


def test_sdist_sha256_mismatch_refuses_and_keeps_nothing(tmp_path):
    bad = tmp_path / "MinkowskiEngine-0.5.4.tar.gz"
    bad.write_bytes(b"not the sdist")
    cache = tmp_path / "cache"
    with pytest.raises(bm.BuildError, match="sha256 mismatch.*refusing"):
        ms.fetch_sdist(bad.as_uri(), SDIST_SHA, cache)
    assert list((cache / "sources").iterdir()) == []


def test_sdist_download_verified_and_cached(tmp_path):
    good = tmp_path / "x.tar.gz"
    good.write_bytes(b"payload")
    digest = hashlib.sha256(b"payload").hexdigest()
    first = ms.fetch_sdist(good.as_uri(), digest, tmp_path / "cache")
    good.unlink()  # the second call must not need the network
    assert ms.fetch_sdist(good.as_uri(), digest, tmp_path / "cache") == first
    assert first.read_bytes() == b"payload"


def test_sdist_unreachable_says_how_to_go_offline(tmp_path):
    with pytest.raises(bm.BuildError, match="--source PATH"):
        ms.fetch_sdist((tmp_path / "nope.tar.gz").as_uri(), SDIST_SHA, tmp_path / "cache")


@pytest.fixture
def git_repo(tmp_path):
    if shutil.which("git") is None:
        pytest.fail("git is required by the build module (apt-get install git)")
    repo = tmp_path / "fork"
    repo.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    for cmd in (["init", "-q", "-b", "cuda12-installation"], ["commit", "-q", "--allow-empty", "-m", "one"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, env=env)
    (repo / "setup.py").write_text("# fork\n")
    subprocess.run(["git", "add", "setup.py"], cwd=repo, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "two"], cwd=repo, check=True, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True, text=True)
    return repo, head.stdout.strip()


def test_git_checkout_of_the_pinned_commit(tmp_path, git_repo):
    repo, head = git_repo
    dest = ms.checkout_commit(repo.as_uri(), "cuda12-installation", head, tmp_path / "clone")
    assert (dest / "setup.py").read_text() == "# fork\n"
    assert ms.git_reachable(repo.as_uri(), "cuda12-installation") == (True, "reachable")
    assert ms.git_reachable((tmp_path / "nothing").as_uri(), "main")[0] is False


def test_git_commit_mismatch_refuses(tmp_path, git_repo):
    repo, head = git_repo
    with pytest.raises(bm.BuildError, match="commit mismatch.*refusing"):
        ms.checkout_commit(repo.as_uri(), "cuda12-installation", head[:10], tmp_path / "clone")
    with pytest.raises(bm.BuildError, match="git"):
        ms.checkout_commit(repo.as_uri(), "cuda12-installation", "0" * 40, tmp_path / "clone2")


def test_local_sources(tmp_path):
    me = load_spec().minkowski
    tree = make_tree(tmp_path / "tree", fork=False)
    local = ms.locate(me, str(tree), tmp_path / "cache")
    assert local.kind == "local" and len(local.id) == 64
    (tree / "setup.py").write_text((tree / "setup.py").read_text() + "# edited\n")
    assert ms.locate(me, str(tree), tmp_path / "cache").id != local.id
    (tree / "build").mkdir()
    (tree / "build" / "obj.o").write_bytes(b"\0")
    assert ms.tree_hash(tree) == ms.locate(me, str(tree), tmp_path / "cache").id  # build outputs do not count
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="MinkowskiEngine-x")
    located = ms.locate(me, str(archive), tmp_path / "cache")
    assert located.kind == "local" and located.id == ms.sha256_file(archive)
    unpacked = ms.materialize(located, me, tmp_path / "work")
    assert (unpacked / "setup.py").is_file()
    with pytest.raises(bm.BuildError, match="no such file"):
        ms.locate(me, str(tmp_path / "missing"), tmp_path / "cache")


@pytest.mark.skipif(_real_sdist() is None, reason="the 0.5.4 sdist is not cached here (make setup downloads it)")
def test_carried_sdist_counts_as_the_sdist(tmp_path):
    me = load_spec().minkowski
    copy = tmp_path / "MinkowskiEngine-0.5.4.tar.gz"
    shutil.copy(_real_sdist(), copy)
    located = ms.locate(me, str(copy), tmp_path / "cache")
    assert (located.kind, located.id, located.url) == ("sdist", me.sdist_sha256, me.sdist_url)


# ---- compiling (with a stand-in for pip) ---------------------------------------------------------------------

FAKE_PIP = """#!/bin/sh
# Stand-in for `python -m pip wheel ...`: records MAX_JOBS, prints ninja-like steps, then does what $MODE says.
echo "$MAX_JOBS" >> "{calls}"
out=""; prev=""
for a in "$@"; do [ "$prev" = "--wheel-dir" ] && out="$a"; prev="$a"; done
echo "[1/2] c++ -MMD -MF x.o.d -c /tmp/t/src/convolution_cpu.cpp -o x.o"
n=$(wc -l < "{calls}")
case "{mode}" in
  oom_once) if [ "$n" -eq 1 ]; then echo "c++: fatal error: Killed signal terminated program cc1plus"; exit 1; fi ;;
  oom) echo "c++: fatal error: Killed signal terminated program cc1plus"; exit 1 ;;
  enospc) echo "fatal error: error writing to /tmp/ccX.s: No space left on device"; exit 1 ;;
  fail) echo "error: namespace thrust has no member device"; exit 1 ;;
esac
echo "[2/2] c++ -shared x.o -o _C.so"
touch "$out/minkowskiengine-0.5.4-cp311-cp311-linux_x86_64.whl"
"""


def _compile_with(tmp_path, mode, jobs=4):
    calls = tmp_path / "calls"
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PIP.format(calls=calls, mode=mode))
    fake.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    said: list[str] = []
    try:
        wheel = bm.compile_wheel(
            str(fake),
            tmp_path,
            out,
            cpu_only=True,
            blas="openblas",
            archs=None,
            jobs=jobs,
            log_path=tmp_path / "build.log",
            say=said.append,
        )
    finally:
        jobs_seen = calls.read_text().split() if calls.exists() else []
    return wheel, jobs_seen, said


def test_compile_retries_once_with_half_the_jobs_after_oom(tmp_path):
    wheel, jobs_seen, said = _compile_with(tmp_path, "oom_once", jobs=4)
    assert wheel.name.endswith(".whl") and jobs_seen == ["4", "2"]
    assert any("killed for memory" in line for line in said)
    assert any(line.startswith("[ 1/2] compiling convolution_cpu.cpp") for line in said)
    assert "Killed signal" in (tmp_path / "build.log").read_text()  # the full output is in the log


def test_compile_oom_twice_fails_with_the_fix(tmp_path):
    with pytest.raises(bm.BuildError, match="killed for memory: pass --jobs 1"):
        _compile_with(tmp_path, "oom", jobs=4)
    assert (tmp_path / "calls").read_text().split() == ["4", "2"]


def test_compile_disk_full_and_plain_failure(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(bm.BuildError, match="disk full"):
        _compile_with(tmp_path / "a", "enospc")
    with pytest.raises(bm.BuildError, match="(?s)build failed.*thrust has no member") as info:
        _compile_with(tmp_path / "b", "fail", jobs=1)
    assert "build.log" in str(info.value)
    assert (tmp_path / "b" / "calls").read_text().split() == ["1"]  # no retry for a compile error


def test_wheel_command_passes_each_option_as_its_own_config_setting():
    cmd = bm.wheel_command("py", Path("/src"), Path("/out"), cpu_only=False, blas="openblas")
    assert "-C--global-option=--force_cuda" in cmd and "-C--global-option=--blas=openblas" in cmd
    assert "--no-build-isolation" in cmd and "--no-deps" in cmd
    cmd = bm.wheel_command("py", Path("/src"), Path("/out"), cpu_only=True, blas="openblas")
    assert "-C--global-option=--cpu_only" in cmd
    env = bm.build_env("/opt/venv/bin/python", jobs=3, archs="9.0")
    assert env["MAX_JOBS"] == "3" and env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert env["PATH"].split(os.pathsep)[0] == "/opt/venv/bin"


def test_progress_line():
    line = "[ 7/20] /usr/local/cuda/bin/nvcc --generate-dependencies-with-compile -c /tmp/a/src/spmm.cu -o /tmp/b.o"
    assert bm.progress_line(line, started=0.0).startswith("[ 7/20] compiling spmm.cu (")
    assert bm.progress_line("building 'MinkowskiEngineBackend._C' extension", started=0.0) is None


def test_a_silent_compile_still_reports_progress(tmp_path):
    """The build prints nothing until its first object is done (over a minute): the heartbeat fills the silence
    with the elapsed time and the objects finished so far, and a step line passes through as it comes."""
    script = (
        "import pathlib, time; time.sleep(0.7); pathlib.Path('build/temp').mkdir(parents=True);"
        "pathlib.Path('build/temp/a.o').touch(); print('[1/2] c++ -c src/a.cpp -o build/temp/a.o', flush=True);"
        "time.sleep(0.7)"
    )
    said = []
    with open(tmp_path / "log.txt", "w") as log:
        command = [sys.executable, "-c", script]
        rc, _ = bm.run_logged(
            command, env=dict(os.environ), cwd=tmp_path, log_file=log, say=said.append, heartbeat_s=0.2
        )
    assert rc == 0
    step = next(i for i, s in enumerate(said) if s.startswith("[ 1/2] compiling a.cpp ("))
    before, after = said[:step], said[step + 1 :]
    assert before and all(s.startswith("  still compiling: 0m00s elapsed, 0 objects built") for s in before), said
    assert after and all(s.endswith(" elapsed, 1 of 2 objects built") for s in after), said


# ---- wheel metadata ------------------------------------------------------------------------------------------


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_fake_wheel(folder: Path, name: str = "fakeme") -> Path:
    """A minimal valid wheel (one module) pip can install."""
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{name}-0.5.4.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.5.4\n".encode(),
        f"{name}-0.5.4.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, data in files.items():
        writer.writerow([path, _hash(data), len(data)])
    writer.writerow([f"{name}-0.5.4.dist-info/RECORD", "", ""])
    wheel = folder / f"{name}-0.5.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{name}-0.5.4.dist-info/RECORD", record.getvalue())
    return wheel


def test_embed_record_adds_file_and_record_row(tmp_path):
    wheel = make_fake_wheel(tmp_path)
    record = {"schema": 1, "me_version": "0.5.4", "source": {"kind": "sdist", "id": SDIST_SHA, "url": "u"}}
    mw.embed_build_record(wheel, record)
    mw.embed_build_record(wheel, {**record, "me_version": "0.5.4"})  # embedding twice keeps one entry
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        payload = zf.read("fakeme-0.5.4.dist-info/rsna_build.json")
        rows = list(csv.reader(io.StringIO(zf.read("fakeme-0.5.4.dist-info/RECORD").decode())))
    assert names.count("fakeme-0.5.4.dist-info/rsna_build.json") == 1
    assert json.loads(payload) == record
    row = [r for r in rows if r[0].endswith("rsna_build.json")]
    assert row == [["fakeme-0.5.4.dist-info/rsna_build.json", _hash(payload), str(len(payload))]]
    assert rows[-1][0].endswith("/RECORD")
    mw.verify_record(wheel)
    assert mw.read_build_record(wheel) == record
    (tmp_path / "plain").mkdir()
    assert mw.read_build_record(make_fake_wheel(tmp_path / "plain")) is None


def test_pip_installs_the_embedded_record(tmp_path):
    wheel = make_fake_wheel(tmp_path)
    mw.embed_build_record(wheel, {"schema": 1, "cpu_only": True})
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
    )
    dist = next(importlib.metadata.distributions(path=[str(target)]))
    assert json.loads(dist.read_text("rsna_build.json")) == {"schema": 1, "cpu_only": True}


def test_cache_lookup_by_embedded_record(tmp_path):
    source = ms.Source("sdist", SDIST_SHA, "u", "p")
    record = bm.build_record(
        me_version="0.5.4",
        source=source,
        fixes=["collections-abc"],
        tc=_toolchain(),
        archs=None,
        cpu_only=True,
        blas="openblas",
    )
    key = record["cache_key"]
    house = tmp_path / "house"
    house.mkdir()
    wheel = make_fake_wheel(house, name="minkowskiengine")
    renamed = wheel.with_name("minkowskiengine-0.5.4-cp311-cp311-linux_x86_64.whl")
    wheel.rename(renamed)
    assert bm.find_cached_wheel(key, tmp_path / "cache", [house]) is None  # no record: provenance unknown
    mw.embed_build_record(renamed, record)
    assert bm.find_cached_wheel(key, tmp_path / "cache", [house]) == renamed
    assert bm.find_cached_wheel(key[::-1], tmp_path / "cache", [house]) is None
    stored = bm.store_in_cache(renamed, key, tmp_path / "cache")
    assert bm.find_cached_wheel(key, tmp_path / "cache") == stored


def test_ensure_installed_uses_a_matching_wheel_without_building(tmp_path):
    """The cache-hit path end to end (probe, locate, key, lookup), with --no-install: no compiler runs."""
    spec = load_spec()
    tree = make_tree(tmp_path / "tree", fork=False)
    first = bm.ensure_installed(
        spec, source=str(tree), cpu_only=True, cache_dir=tmp_path / "cache", dry_run=True, say=lambda _: None
    )
    assert first.from_cache is False and first.metadata["source"]["kind"] == "local"
    house = tmp_path / "house"
    house.mkdir()
    wheel = make_fake_wheel(house, name="minkowskiengine")
    wheel = wheel.rename(wheel.with_name("minkowskiengine-0.5.4-cp311-cp311-linux_x86_64.whl"))
    mw.embed_build_record(wheel, first.metadata)
    result = bm.ensure_installed(
        spec,
        source=str(tree),
        cpu_only=True,
        cache_dir=tmp_path / "cache",
        wheelhouses=[house],
        wheel_out=tmp_path / "out",
        install=False,
        say=lambda _: None,
    )
    assert result.from_cache is True
    assert result.wheel == tmp_path / "out" / wheel.name and result.wheel.is_file()
    assert result.metadata["cache_key"] == first.metadata["cache_key"]


def test_cli_dry_run_and_errors(tmp_path, capsys):
    tree = make_tree(tmp_path / "tree", fork=False)
    assert bm.main(["--source", str(tree), "--cpu-only", "--cache", str(tmp_path / "c"), "--dry-run"]) == 0
    assert "would build" in capsys.readouterr().out
    assert bm.main(["--source", str(tmp_path / "missing"), "--cpu-only", "--cache", str(tmp_path / "c")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_a_fitting_wheel_is_found_before_any_source_lookup(tmp_path, monkeypatch):
    """Offline with a wheel for the pinned sdist attached (issue 16): `auto` must not try git or a download first."""
    spec = load_spec()
    tc = mt.probe(sys.executable)
    target = fx.BuildTarget(python=tc.python, cpu_only=True, torch=tc.torch, nvcc=tc.nvcc, gcc=tc.gcc)
    sdist = ms.Source("sdist", spec.minkowski.sdist_sha256, spec.minkowski.sdist_url, "")
    record = bm.build_record(
        me_version=spec.minkowski.version,
        source=sdist,
        fixes=fx.needed_fixes(target),
        tc=tc,
        archs=None,
        cpu_only=True,
        blas=spec.minkowski.blas,
    )
    house = tmp_path / "house"
    house.mkdir()
    wheel = make_fake_wheel(house, name="minkowskiengine")
    wheel = wheel.rename(wheel.with_name(f"minkowskiengine-0.5.4-{tc.python_tag}-{tc.python_tag}-linux_x86_64.whl"))
    mw.embed_build_record(wheel, record)

    def no_lookup(*args, **kwargs):
        raise AssertionError("a source lookup (git ls-remote or the sdist download) ran before the cache lookup")

    monkeypatch.setattr(bm, "locate", no_lookup)
    for source in ("auto", "sdist"):
        result = bm.ensure_installed(
            spec,
            source=source,
            cpu_only=True,
            cache_dir=tmp_path / "cache",
            wheelhouses=[house],
            install=False,
            say=lambda _: None,
        )
        assert result.from_cache and result.wheel == wheel
    with pytest.raises(AssertionError, match="source lookup"):  # nothing fits a git build: now it must look
        bm.ensure_installed(spec, source="git", cpu_only=True, cache_dir=tmp_path / "c2", install=False, say=print)


def test_a_missing_offline_sdist_names_the_callers_flag(tmp_path):
    with pytest.raises(bm.BuildError, match="Offline\\? Pass --me-source PATH"):
        ms.fetch_sdist((tmp_path / "nope.tar.gz").as_uri(), SDIST_SHA, tmp_path / "cache", flag="--me-source")


def test_pip_with_a_legacy_setup_py_path_gets_use_pep517(tmp_path):
    """Python 3.11/3.12's bundled pip 23.2.1 runs `setup.py egg_info` without --use-pep517, where config settings
    never reach setup.py: it built CPU-only and died on numpy.distutils (issue 16's CUDA 12 build). pip >= 25.3
    has no legacy path and no such flag."""
    old = tmp_path / "old-pip"
    subprocess.run([sys.executable, "-m", "venv", str(old)], check=True, timeout=300, capture_output=True)
    old_python = str(old / "bin" / "python")
    old_version = subprocess.run([old_python, "-m", "pip", "--version"], capture_output=True, text=True).stdout
    modern = bm.pip_needs_pep517_flag(sys.executable)
    assert bm.pip_needs_pep517_flag(old_python) is (int(old_version.split()[1].split(".")[0]) < 25), old_version
    assert modern is (int(importlib.metadata.version("pip").split(".")[0]) < 25)
    cmd = bm.wheel_command("py", Path("/src"), Path("/out"), cpu_only=False, blas="openblas", use_pep517=True)
    assert "--use-pep517" in cmd and "--use-pep517" not in bm.wheel_command(
        "py", Path("/src"), Path("/out"), cpu_only=False, blas="openblas"
    )


def test_a_wheel_built_elsewhere_for_more_archs_and_other_fixes_is_used_not_rebuilt(tmp_path, monkeypatch):
    """The Kaggle session after the wheelhouse session: the wheel was built for 6.0;7.5 with another toolchain's
    fixes, this machine asks for 7.5. The installer's plan calls it fitting, so the build module must install it
    (before, its exact cache key differed in archs and fixes and it rebuilt: 20+ minutes on Kaggle)."""
    spec = load_spec()
    tc = mt.probe(sys.executable)
    sdist = ms.Source("sdist", spec.minkowski.sdist_sha256, spec.minkowski.sdist_url, "")

    def record(fixes, archs, cpu_only):
        return bm.build_record(
            me_version=spec.minkowski.version, source=sdist, fixes=fixes, tc=tc, archs=archs, cpu_only=cpu_only,
            blas=spec.minkowski.blas,
        )  # fmt: skip

    cuda = {**record(["collections-abc", "another-toolchains-fix"], "6.0;7.5", False), "torch_cuda": "12.1"}
    cuda["cache_key"] = bm.key_of_record(cuda)
    wanted = {**cuda, "fixes": ["collections-abc"], "cuda_archs": "7.5"}
    assert bm.record_misfit(cuda, wanted) == ""
    assert "archs" in bm.record_misfit(cuda, {**wanted, "cuda_archs": "8.6"})
    assert "torch" in bm.record_misfit(cuda, {**wanted, "torch": "9.9.9"})
    assert "CUDA" in bm.record_misfit(cuda, {**wanted, "torch_cuda": "11.8"})
    assert "inconsistent" in bm.record_misfit({**cuda, "torch": "9.9.9"}, wanted)

    house = tmp_path / "house"
    house.mkdir()
    wheel = make_fake_wheel(house, name="minkowskiengine")
    wheel = wheel.rename(wheel.with_name(f"minkowskiengine-0.5.4-{tc.python_tag}-{tc.python_tag}-linux_x86_64.whl"))
    mw.embed_build_record(wheel, record(["another-toolchains-fix"], None, True))
    monkeypatch.setattr(bm, "locate", lambda *a, **k: pytest.fail("looked for a source: the fitting wheel was missed"))
    result = bm.ensure_installed(
        spec, source="sdist", cpu_only=True, cache_dir=tmp_path / "cache", wheelhouses=[house], install=False,
        say=lambda _: None,
    )  # fmt: skip
    assert result.from_cache and result.wheel == wheel
