"""Models built from :mod:`surgvista.layers`: the student, the teacher, the fine-tuning classifier, probe heads,
the backbone zoo, and their named presets (:mod:`surgvista.models.presets`)."""
