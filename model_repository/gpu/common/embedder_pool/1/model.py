"""Embedder step 3 on GPU: masked mean over tokens, then L2 norm (as smoothguard.embedder).

The encoder's output stays on the device: CuPy reads it by DLPack and the pooled embeddings
leave the same way.
"""

import triton_python_backend_utils as pb_utils

from smoothguard.embedder_pool import mean_pool
from smoothguard.xp import get_xp
from smoothguard_triton.dlpack import as_array, output_tensor
from smoothguard_triton.glue import limit_threads, model_parameters, respond_each


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.xp = get_xp(params.get("device", "auto"))

    def execute(self, requests):
        return respond_each(requests, self._handle)

    def _handle(self, request):
        hidden = as_array(pb_utils.get_input_tensor_by_name(request, "TOKEN_EMBEDDINGS"), self.xp)
        mask = as_array(pb_utils.get_input_tensor_by_name(request, "ATTENTION_MASK"), self.xp)
        return [output_tensor("EMBEDDING", mean_pool(hidden, mask))]
