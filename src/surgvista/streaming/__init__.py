"""Online (streaming) phase recognition: live inputs, causal per-frame predictions, overlays and deployment export."""
