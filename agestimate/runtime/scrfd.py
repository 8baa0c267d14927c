"""insightface's SCRFD detector, its post-processing decoding only the anchors that pass the threshold."""

from __future__ import annotations

import numpy as np
from insightface.model_zoo.scrfd import SCRFD, distance2bbox, distance2kps


class SCRFDetector(SCRFD):
    """insightface 2.1's `SCRFD` with the same results, but a `forward` that decodes the box and
    landmarks of the anchors whose score passes the threshold only: insightface decodes every
    anchor, then selects (4.5 -> 1.4 ms an FG-NET photo; BENCHMARKS.md, issue 26)."""

    def forward(self, img, threshold):
        input_size = tuple(img.shape[0:2][::-1])
        blob = self._prepare_input_blob(img, input_size)
        outputs = self._session_for_input_size(input_size).run(self.output_names, {self.input_name: blob})
        if self.batched:
            outputs = [output[0] for output in outputs]
        scores_list, bboxes_list, kpss_list = [], [], []
        for idx, stride in enumerate(self._feat_stride_fpn):
            scores = outputs[idx]
            keep = np.where(scores >= threshold)[0]
            centers = self._anchor_centers(blob.shape[2] // stride, blob.shape[3] // stride, stride)[keep]
            scores_list.append(scores[keep])
            bboxes_list.append(distance2bbox(centers, outputs[idx + self.fmc][keep] * stride))
            if self.use_kps:
                kps = distance2kps(centers, outputs[idx + 2 * self.fmc][keep] * stride)
                kpss_list.append(kps.reshape(len(keep), kps.shape[1] // 2, 2))
        return scores_list, bboxes_list, kpss_list

    def _anchor_centers(self, height: int, width: int, stride: int) -> np.ndarray:
        """(height * width * anchors, 2) x, y of each anchor, kept in insightface's `center_cache`."""
        key = (height, width, stride)
        if key not in self.center_cache:
            centers = (np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
            if self._num_anchors > 1:
                centers = np.stack([centers] * self._num_anchors, axis=1).reshape(-1, 2)
            self.center_cache[key] = centers
        return self.center_cache[key]
