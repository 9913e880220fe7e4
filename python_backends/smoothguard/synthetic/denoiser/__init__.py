"""The denoiser for denoised smoothing (Salman et al. 2020), trained on SynthPOPE: a small
sigma-conditioned U-Net (model.py) and its recipe (train.py). Load a checkpoint through
smoothguard.adapters.denoiser.Denoiser, which any checkpoint of the same interface fits."""

from smoothguard.synthetic.denoiser.model import KIND, UNet, UNetConfig

__all__ = ["KIND", "UNet", "UNetConfig"]
