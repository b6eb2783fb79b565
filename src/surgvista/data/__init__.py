"""Data code: manifests, video readers, clip sampling, transforms, datasets. Knows nothing of models."""
