"""Plain ``nn.Module`` building blocks: student, teacher, masking, position tables."""

from surgvista.layers.masking import MaskGenerator
from surgvista.models.classifier import VideoClassifier
from surgvista.models.student import STUDENT_PRESETS, SurgVISTAStudent
from surgvista.models.teacher import TEACHER_PRESETS, ImageTeacher

__all__ = ["STUDENT_PRESETS", "TEACHER_PRESETS", "ImageTeacher", "MaskGenerator", "SurgVISTAStudent", "VideoClassifier"]
