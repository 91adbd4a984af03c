"""Data: the CT dataset on disk (splits by base slice and series, augmentation) and the
non-CT images the CT gate learns to refuse."""
