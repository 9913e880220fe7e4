"""Triton adapter for step 4 of smoothguard: cluster, choose, apply the policy; for a certify
request, Cohen et al.'s CERTIFY on the noisy answers decides instead (docs/certified.md)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.adapters.preprocess import read_image_input_spec
from smoothguard.core.aggregate import select_one
from smoothguard.core.certify import Certificate, certify, pixel_radius_scale
from smoothguard.core.policy import decide, decide_certified
from smoothguard.core.settings import DefenseSettings, InvalidRequest
from smoothguard.core.validation import DEFAULT_MAX_TEXT_CHARS, check_embeddings, decode_texts
from smoothguard.core.xp import get_xp
from smoothguard_triton.glue import (
    bytes_tensor,
    limit_threads,
    model_parameters,
    required_input,
    respond_each,
    step_options,
)
from smoothguard_triton.metrics import DefenseMetrics, EnsembleTickets


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args)
        limit_threads(params)
        self.settings = DefenseSettings.from_parameters(params)
        # Shared by smoothguard and smoothguard_audio: OPTIONS' sigma is bounded by the larger
        # of the two modalities' limits (this step does not use sigma beyond the audit line).
        self.sigma_max = max(self.settings.sigma_max, self.settings.audio_sigma_max)
        self.xp = get_xp(params.get("device", "auto"))
        self.metrics = DefenseMetrics(self.settings.num_samples_max)
        self.tickets = EnsembleTickets()
        # Pixel-unit radius from the noise unit and the MLLM processor's std, read from its
        # config as the noise step reads it (None without mllm_path: certify then fails).
        path = params.get("mllm_path")
        self.radius_scale = (
            pixel_radius_scale(self.settings.noise_unit, read_image_input_spec(path).std)
            if path
            else None
        )

    def finalize(self):
        self.metrics.close()

    def execute(self, requests):
        return respond_each(requests, self._handle)

    def _handle(self, request):
        options, ticket = step_options(request, self.settings, sigma_max=self.sigma_max)
        candidates = decode_texts(
            required_input(request, "CANDIDATES"),
            name="CANDIDATES",
            max_chars=DEFAULT_MAX_TEXT_CHARS,
            max_rows=options.num_samples,  # adaptive sampling or failing open give fewer
        )
        embeddings = check_embeddings(required_input(request, "EMBEDDINGS"), len(candidates))
        empty = np.array([not c.strip() for c in candidates])
        # The vote runs for certify requests too: its evidence (agreement, the clean answer
        # outvoted) describes all 1 + n0 + n answers; the certificate alone decides.
        selection = select_one(self.xp.asarray(embeddings), empty=empty)
        certificate = self._certify(options, candidates) if options.certify else None
        if certificate is None:
            decision = decide(selection, candidates, options.policy, self.settings)
        else:
            decision = decide_certified(certificate, self.settings)
        certified = certificate is not None and certificate.certified
        radius = certificate.radius if certified else 0.0
        # Only a request that came through an ensemble is a defended request (EnsembleTickets).
        defended = self.tickets.verify(options, ticket)
        if defended:
            self.metrics.record(
                decision.decision, selection.original_outvoted, selection.agreement, len(candidates)
            )
        if self.settings.audit_log:
            self._audit(
                request, options, selection, decision, len(candidates), defended, certificate
            )
        returned = candidates if options.return_candidates else []
        return [
            bytes_tensor("TEXT", [decision.text]),
            bytes_tensor("DECISION", [decision.decision]),
            bytes_tensor("REASON", [decision.reason]),
            pb_utils.Tensor("CHOSEN_INDEX", np.array([selection.chosen_index], np.int32)),
            pb_utils.Tensor("CLUSTER_SIZES", np.array(selection.cluster_sizes, np.int32)),
            pb_utils.Tensor("AGREEMENT", np.array([selection.agreement], np.float32)),
            pb_utils.Tensor("ORIGINAL_OUTVOTED", np.array([selection.original_outvoted])),
            pb_utils.Tensor("TIE", np.array([selection.tie])),
            pb_utils.Tensor("NUM_SAMPLES_USED", np.array([len(candidates)], np.int32)),
            bytes_tensor("ORIGINAL_TEXT", [candidates[0]]),
            bytes_tensor("CANDIDATES", returned, (len(returned),)),
            pb_utils.Tensor("CERTIFIED", np.array([certified])),
            pb_utils.Tensor("CERTIFIED_RADIUS", np.array([radius], np.float32)),
        ]

    def _certify(self, options, candidates) -> Certificate:
        """CERTIFY on candidates[1 : 1 + n0] (selection) and the rest but copy 0 (estimation),
        the split the noise step's certify_draws fixed; sigma in pixel units, so the radius is
        pixel L2 at the model's input resolution."""
        if len(candidates) != options.num_samples:
            raise InvalidRequest(
                f"CANDIDATES has {len(candidates)} rows; a certify request needs all "
                f"{options.num_samples} (certify fails closed)"
            )
        if self.radius_scale is None:
            raise RuntimeError("aggregate has no mllm_path parameter: no pixel-unit radius")
        n0 = self.settings.certify_selection_draws
        return certify(
            candidates[1 : 1 + n0],
            candidates[1 + n0 :],
            sigma=options.sigma * self.radius_scale,
            alpha=self.settings.certify_alpha,
            classes=options.answer_set,
        )

    def _audit(self, request, options, selection, decision, used, defended, certificate):
        """One JSON line a log pipeline can ingest: the evidence, never the prompt or image;
        `ensemble` false marks a direct call to this step (not counted in the metrics)."""
        record = {
            "event": "smoothguard_audit",
            "request_id": request.request_id(),
            "ensemble": defended,
            "decision": decision.decision,
            "reason": decision.reason,
            "agreement": round(selection.agreement, 4),
            "cluster_sizes": list(selection.cluster_sizes),
            "original_outvoted": selection.original_outvoted,
            "tie": selection.tie,
            "num_samples_used": used,
            "num_samples": options.num_samples,
            "sigma": options.sigma,
            "seeded": options.seed is not None,
            "adaptive": options.adaptive,
            "policy": options.policy,
        }
        if certificate is not None:  # other requests' lines stay as they were
            record["certify"] = True
            record["certified_radius"] = round(certificate.radius, 6)
            record["p_lower"] = round(certificate.p_lower, 6)
        pb_utils.Logger.log_info(json.dumps(record, sort_keys=True))
