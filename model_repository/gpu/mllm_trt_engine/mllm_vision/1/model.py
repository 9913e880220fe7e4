"""LLaVA-1.5's vision engine in a Python model: TensorRT-LLM's runtime Session over the engine
that build_multimodal_engine.py wrote, since the pinned container ships no TensorRT backend.

All images of all batched requests run as one engine call (up to max_batch_size rows, the
engine's own limit); the prompt tables leave on the GPU by DLPack.
"""

import json
from pathlib import Path

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from smoothguard_triton.glue import error_response, limit_threads, model_parameters


class TritonPythonModel:
    def initialize(self, args):
        from tensorrt_llm._utils import str_dtype_to_torch, torch_dtype_to_trt
        from tensorrt_llm.runtime import Session, TensorInfo

        params = model_parameters(args)
        limit_threads(params)
        engine_dir = Path(params["engine_dir"])
        config = json.loads((engine_dir / "config.json").read_text())
        self.dtype = str_dtype_to_torch(config["builder_config"]["precision"])
        self.session = Session.from_serialized_engine((engine_dir / "model.engine").read_bytes())
        self.max_rows = int(json.loads(args["model_config"])["max_batch_size"])
        self.stream = torch.cuda.current_stream()
        self._info, self._trt_dtype = TensorInfo, torch_dtype_to_trt

    def execute(self, requests):
        try:
            pixels = [self._pixels(r) for r in requests]
            tables = torch.cat(
                [self._encode(chunk) for chunk in torch.cat(pixels).split(self.max_rows)]
            )
        except Exception as exc:  # noqa: BLE001 - the batch fails together
            return [error_response(exc) for _ in requests]
        responses, start = [], 0
        for rows in (len(p) for p in pixels):
            table = tables[start : start + rows].contiguous()
            start += rows
            out = pb_utils.Tensor.from_dlpack("encoder_output", to_dlpack(table))
            responses.append(pb_utils.InferenceResponse([out]))
        return responses

    def _pixels(self, request):
        tensor = pb_utils.get_input_tensor_by_name(request, "input")
        return from_dlpack(tensor.to_dlpack()).to("cuda", self.dtype, non_blocking=True)

    def _encode(self, batch):
        inputs = {"input": batch.contiguous()}
        info = [self._info("input", self._trt_dtype(batch.dtype), tuple(batch.shape))]
        outputs = {
            t.name: torch.empty(tuple(t.shape), dtype=self.dtype, device="cuda")
            for t in self.session.infer_shapes(info)
        }
        with torch.cuda.stream(self.stream):
            if not self.session.run(inputs, outputs, self.stream.cuda_stream):
                raise RuntimeError("the vision engine's TensorRT session failed")
        self.stream.synchronize()
        return outputs["encoder_output"].to(torch.float16)
