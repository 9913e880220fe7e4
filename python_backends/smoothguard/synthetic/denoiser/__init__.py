"""The denoiser for denoised smoothing (Salman et al. 2020), trained on SynthPOPE: its recipe
(train.py) for the small sigma-conditioned U-Net whose architecture lives with the loader
(smoothguard.adapters.denoiser_unet), since loading a checkpoint needs it. Load one through
smoothguard.adapters.denoiser.Denoiser, which any checkpoint of the same interface fits."""

from smoothguard.adapters.denoiser_unet import KIND, UNet, UNetConfig

__all__ = ["KIND", "UNet", "UNetConfig"]
