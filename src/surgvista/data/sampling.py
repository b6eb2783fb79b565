"""Causal clip sampling of the reference."""

from __future__ import annotations


def causal_clip_indices(anchor: int, num_frames: int = 16, rate: int = 4) -> list[int]:
    """Frame ids of the clip that *ends* at ``anchor``, oldest first.

    Steps back by ``rate`` while the frame stays ≥ 0; near the video start the earliest reachable frame is
    repeated to pad the front. Clips never cross the video start and never look past the anchor.
    """
    if anchor < 0 or num_frames < 1 or rate < 1:
        raise ValueError(f"need anchor >= 0, num_frames >= 1, rate >= 1; got {anchor}, {num_frames}, {rate}")
    ids, cur = [], anchor
    for _ in range(num_frames):
        ids.append(cur)
        if cur - rate >= 0:
            cur -= rate
    return sorted(ids)
