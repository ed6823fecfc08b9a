"""`python -m rsna_phase0.training [train options]`: the entry point for torchrun, e.g.

torchrun --nproc_per_node=2 -m rsna_phase0.training --preset kaggle --mri-dir ... --out runs/k1 --resume auto
"""

import sys

from rsna_phase0.training.commands import train

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["train"]:  # also accept the sub-command's name, as in `rsna-phase0 train ...`
        args = args[1:]
    train.main(args=args, prog_name="python -m rsna_phase0.training")
