"""SmoothGuard: randomized-smoothing defense for multimodal LLMs (arXiv 2510.26830).

The algorithm modules (noise, kmeans, aggregate, policy, pipeline) import no Triton code, so
the evaluation tools run the very code the server runs.
"""

__version__ = "0.1.0"
