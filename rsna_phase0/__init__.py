"""rsna_phase0: Phase-0 self-supervised pre-training of a 3D encoder for the RSNA 2025 aneurysm challenge.

Kept free of heavy imports: the Kaggle installer imports `rsna_phase0.check_env` before torch is installed.
"""

__version__ = "0.1.0"
