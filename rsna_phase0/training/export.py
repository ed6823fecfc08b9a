"""Export the dense encoder from a training checkpoint, and prove the file loads without MinkowskiEngine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rsna_phase0.atomic import folder_write_problem
from rsna_phase0.training.checkpoint import BEST, LAST, digest_path, load_checkpoint

# run in a fresh interpreter: this process has MinkowskiEngine loaded already
_VERIFY = """
import sys
from rsna_phase0.models.encoder_file import load_dense_encoder
encoder = load_dense_encoder(sys.argv[1])
loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'MinkowskiEngine')
if loaded:
    sys.exit('loading the exported encoder imported ' + ', '.join(loaded))
print(sum(p.numel() for p in encoder.parameters()))
"""


def verify_loads_without_minkowski(path: Path) -> int:
    """Parameter count of the exported encoder as loaded by a fresh Python that never imports MinkowskiEngine."""
    done = subprocess.run([sys.executable, "-c", _VERIFY, str(path)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise ValueError(f"{path}: the exported encoder does not load on its own: {done.stderr.strip()[-800:]}")
    return int(done.stdout.strip().splitlines()[-1])


def check_export_target(checkpoint: Path, out: Path) -> None:
    """Refuse, before any work, an output that is a folder, the checkpoint itself, any training checkpoint, or
    that cannot be written."""
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; give the encoder a file name, e.g. {out / 'encoder.pt'}")
    if out.exists():
        if checkpoint.exists() and os.path.samefile(out, checkpoint):
            raise ValueError(f"{out}: is the checkpoint being exported; write the encoder to another file")
        if digest_path(out).exists() or ckpt_name(out.name):
            raise ValueError(
                f"{out}: is a training checkpoint; export-encoder never overwrites one, choose another file name"
            )
    problem = folder_write_problem(out.parent)
    if problem:
        raise ValueError(f"{out}: cannot write the encoder there: {problem}")


def ckpt_name(name: str) -> bool:
    return name in (LAST, BEST) or (name.startswith("checkpoint_epoch_") and name.endswith(".pt"))


def export_encoder_file(checkpoint: str | Path, out: str | Path, verify: bool = True) -> str:
    from rsna_phase0.models.encoder_file import export_dense_encoder, save_dense_encoder

    checkpoint, out = Path(checkpoint), Path(out)
    check_export_target(checkpoint, out)
    state = load_checkpoint(checkpoint)
    encoder = export_dense_encoder({"preset": state["config"]["preset"], "model": state["model"]})
    path = save_dense_encoder(encoder, out)
    params = sum(p.numel() for p in encoder.parameters())
    text = (
        f"exported the dense encoder of {checkpoint} (step {state['step']}, preset {state['config']['preset']['name']}) "
        f"to {path}: {params / 1e6:.2f} M parameters"
    )
    if verify:
        loaded = verify_loads_without_minkowski(path)
        if loaded != params:
            raise ValueError(f"{path}: reloaded encoder has {loaded} parameters, exported {params}")
        text += "; verified: loads in plain PyTorch without MinkowskiEngine"
    return text
