"""CUDA arch lists: does a build (torch's, MinkowskiEngine's) carry kernels a GPU of a given capability can run?"""

from __future__ import annotations


def parse_archs(archs) -> set[tuple[int, int, bool]]:
    """Arch lists as (major, minor, is_ptx): torch's ['sm_75', 'compute_90'] or a build's '7.5;8.6+PTX'."""
    items = (
        archs if isinstance(archs, list | tuple) else str(archs or "").replace(",", ";").replace(" ", ";").split(";")
    )
    parsed = set()
    for item in (str(i).strip() for i in items):
        ptx_only, with_ptx = item.startswith("compute_"), item.endswith("+PTX")
        digits = item.removesuffix("+PTX").split("_")[-1].rstrip("abf")  # sm_90a, sm_100f: arch-specific variants
        major, minor = digits.split(".")[:2] if "." in digits else (digits[:-1], digits[-1:])
        if not (major.isdigit() and minor.isdigit()):
            continue
        if not ptx_only:
            parsed.add((int(major), int(minor), False))
        if ptx_only or with_ptx:
            parsed.add((int(major), int(minor), True))
    return parsed


def arch_covers(archs, capability: str) -> bool:
    """A cubin for sm_XY runs on the same major with minor >= Y; PTX for compute_XY JIT-compiles for >= XY."""
    major, minor = (int(p) for p in capability.split(".")[:2])
    for a_major, a_minor, ptx in parse_archs(archs):
        if ptx and (a_major, a_minor) <= (major, minor):
            return True
        if not ptx and a_major == major and a_minor <= minor:
            return True
    return False
