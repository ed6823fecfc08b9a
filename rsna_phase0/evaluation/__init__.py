"""`rsna-phase0 evaluate`: does the pre-trained encoder help a downstream task? The pipeline, one module a stage:

- `cases.py`      find a labelled folder's files (image + label map, or images + a labels CSV) and check them
- `preprocess.py` read, normalise and resample a case exactly as pre-training does (labels nearest-neighbour)
- `split.py`      the held-out split and the label-fraction subsets
- `geometry.py`   valid input sizes, padding and sliding windows
- `sampling.py`   training batches: oversampled crops (segmentation), whole padded volumes (classification)
- `heads.py`      the task heads over the encoder's maps (UNet-style decoder, pooled linear / MLP) and the model
- `finetune.py`   one fine-tune, and scoring held-out cases with it
- `metrics.py`    Dice per class, AUC, mean +- sd
- `experiment.py` the grid: seeds x label fractions x modes x (pretrained, random init)
- `report.py`     the table, the JSON and the plot
- `commands.py`   the command line
"""

# steps per fine-tune: the acceptance run (kaggle preset, 3 seeds x 2 fractions x 2 modes x 2 inits = 24
# fine-tunes, 20 held-out heads) fits about 5 H200 minutes (README, "Checking that Phase 0 paid off")
DEFAULT_STEPS = 250
# AdamW learning rate of head and encoder: heads start from scratch and budgets are short (1e-3 left aneurysms
# unlearnt after 160 smoke steps where 3e-3 reached Dice ~0.5 in 200)
DEFAULT_LR = 3e-3
