"""Triton adapter for step 4 of smoothguard: cluster, choose, apply the policy."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.core.aggregate import select_one
from smoothguard.core.policy import decide
from smoothguard.core.settings import DefenseSettings
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
        selection = select_one(self.xp.asarray(embeddings), empty=empty)
        decision = decide(selection, candidates, options.policy, self.settings)
        # Only a request that came through an ensemble is a defended request (EnsembleTickets).
        defended = self.tickets.verify(options, ticket)
        if defended:
            self.metrics.record(
                decision.decision, selection.original_outvoted, selection.agreement, len(candidates)
            )
        if self.settings.audit_log:
            self._audit(request, options, selection, decision, len(candidates), defended)
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
        ]

    def _audit(self, request, options, selection, decision, used, defended):
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
        pb_utils.Logger.log_info(json.dumps(record, sort_keys=True))
