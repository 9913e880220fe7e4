"""The vote's outcome as the defended endpoint's output tensors: cluster, choose, apply the
policy (or, for a certify request, Cohen et al.'s CERTIFY), count it in the metrics and write
the audit line. Shared by the ensemble's aggregate step and the single-model endpoint, so
both answer with the same tensors, metrics and audit records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from smoothguard.adapters.preprocess import read_image_input_spec
from smoothguard.core.aggregate import Selection, select_one
from smoothguard.core.certify import Certificate, certify, pixel_radius_scale
from smoothguard.core.policy import Decision, decide, decide_certified
from smoothguard.core.settings import DefenseSettings, InvalidRequest, RequestOptions
from smoothguard_triton.glue import bytes_tensor
from smoothguard_triton.metrics import DefenseMetrics


class Verdict:
    def __init__(self, params: dict[str, str], settings: DefenseSettings, xp: Any) -> None:
        self.settings = settings
        self.xp = xp
        self.metrics = DefenseMetrics(settings.num_samples_max)
        # Pixel-unit radius from the noise unit and the MLLM processor's std, read from its
        # config as the noise step reads it (None without mllm_path: certify then fails).
        path = params.get("mllm_path")
        self.radius_scale = (
            pixel_radius_scale(settings.noise_unit, read_image_input_spec(path).std)
            if path
            else None
        )

    def close(self) -> None:
        self.metrics.close()

    def outputs(
        self,
        options: RequestOptions,
        candidates: Sequence[str],
        embeddings: np.ndarray,
        *,
        request_id: str,
        defended: bool,
    ) -> list[Any]:
        """The endpoint's output tensors. `defended`: the request came through a defended
        endpoint (not a direct call to a step), so the metrics count it."""
        empty = np.array([not c.strip() for c in candidates])
        # The vote runs for certify requests too: its evidence (agreement, the clean answer
        # outvoted) describes all 1 + n0 + n answers; the certificate alone decides.
        selection = select_one(self.xp.asarray(embeddings), empty=empty)
        certificate = self._certify(options, candidates) if options.certify else None
        if certificate is None:
            decision = decide(selection, list(candidates), options.policy, self.settings)
        else:
            decision = decide_certified(certificate, self.settings)
        certified = certificate is not None and certificate.certified
        radius = certificate.radius if certified else 0.0
        if defended:
            self.metrics.record(
                decision.decision, selection.original_outvoted, selection.agreement, len(candidates)
            )
        if self.settings.audit_log:
            self._audit(
                request_id, options, selection, decision, len(candidates), defended, certificate
            )
        returned = list(candidates) if options.return_candidates else []
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

    def _certify(self, options: RequestOptions, candidates: Sequence[str]) -> Certificate:
        """CERTIFY on candidates[1 : 1 + n0] (selection) and the rest but copy 0 (estimation),
        the split the noise step's certify_draws fixed; sigma in pixel units, so the radius is
        pixel L2 at the model's input resolution."""
        if len(candidates) != options.num_samples:
            raise InvalidRequest(
                f"CANDIDATES has {len(candidates)} rows; a certify request needs all "
                f"{options.num_samples} (certify fails closed)"
            )
        if self.radius_scale is None:
            raise RuntimeError("no mllm_path parameter: no pixel-unit radius")
        n0 = self.settings.certify_selection_draws
        return certify(
            list(candidates[1 : 1 + n0]),
            list(candidates[1 + n0 :]),
            sigma=options.sigma * self.radius_scale,
            alpha=self.settings.certify_alpha,
            classes=options.answer_set,
        )

    def _audit(
        self,
        request_id: str,
        options: RequestOptions,
        selection: Selection,
        decision: Decision,
        used: int,
        defended: bool,
        certificate: Certificate | None,
    ) -> None:
        """One JSON line a log pipeline can ingest: the evidence, never the prompt or image;
        `ensemble` false marks a direct call to a step (not counted in the metrics)."""
        record = {
            "event": "smoothguard_audit",
            "request_id": request_id,
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
