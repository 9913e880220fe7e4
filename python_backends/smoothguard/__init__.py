"""SmoothGuard: randomized-smoothing defense for multimodal LLMs (arXiv 2510.26830).

Layers, each a subpackage: ``core`` (the defense; no Triton, torch, CuPy or client imports, so
the evaluation runs the very code the server runs), ``adapters`` (models behind the defense),
``synthetic`` (benchmarks and default models), ``evaluation`` (attacks and measurements) and
``serving`` (supervisor, gateway, watchdog).
"""

from smoothguard import _moved

__version__ = "0.1.0"

_moved.install()
