"""Named presets, the config resolvers, a light ``import surgvista`` and seeded model construction."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from surgvista.checkpoints.export import infer_architecture
from surgvista.models.classifier import VideoClassifier
from surgvista.models.presets import STUDENT_PRESETS, TEACHER_PRESETS, lookup
from surgvista.models.student import SurgVISTAStudent
from surgvista.models.teacher import ImageTeacher
from surgvista.utils.seeding import seeded

GEOM = {"img_size": 32, "num_frames": 4, "patch_size": 8}


def test_presets_have_named_fields():
    base = STUDENT_PRESETS["base"]
    assert (base.embed_dim, base.depth, base.num_heads) == (768, 12, 12)
    assert (base.pixel_decoder_dim, base.pixel_decoder_heads, base.image_decoder_dim) == (384, 6, 384)
    assert TEACHER_PRESETS["large"]._asdict() == {"embed_dim": 1024, "depth": 24, "num_heads": 16}
    with pytest.raises(ValueError, match=r"unknown student preset 'giant'; expected one of \['base', 'huge'"):
        lookup(STUDENT_PRESETS, "giant", "student preset")


def test_models_take_their_sizes_from_the_presets():
    with torch.device("meta"):
        student = SurgVISTAStudent("small", image_decoder_dim=None)
        classifier = VideoClassifier(3, "large")
    small = STUDENT_PRESETS["small"]
    assert len(student.blocks) == small.depth and student.blocks[0].attn.num_heads == small.num_heads
    assert student.down_vid.out_features == small.pixel_decoder_dim
    assert student.decoder_img.blocks[0].attn.num_heads == small.image_decoder_heads
    assert (classifier.embed_dim, len(classifier.blocks)) == (1024, 24)
    teacher = ImageTeacher("tiny", img_size=32)
    assert (teacher.embed_dim, teacher.depth) == (TEACHER_PRESETS["tiny"].embed_dim, TEACHER_PRESETS["tiny"].depth)


def test_export_reads_head_counts_off_the_presets():
    tiny = SurgVISTAStudent("tiny", **GEOM)
    arch = infer_architecture(tiny.state_dict())
    assert arch["num_heads"] == 3 and arch["decoder"]["num_heads"] == 3  # tiny: 192 wide, 4 deep; decoder 96 wide
    odd = SurgVISTAStudent("tiny", **GEOM, embed_dim=128, depth=2, num_heads=4, pixel_decoder_dim=48)
    arch = infer_architecture(odd.state_dict())
    assert arch["num_heads"] == 2 and arch["decoder"]["num_heads"] == 1  # no preset: width // 64


def test_teacher_dim_resolver_reads_the_teacher_presets():
    cfg = OmegaConf.create({"dim": "${surgvista.teacher_dim:small}", "bad": "${surgvista.teacher_dim:giant}"})
    assert cfg.dim == 384
    with pytest.raises(Exception, match="unknown teacher preset 'giant'"):
        _ = cfg.bad


def test_import_surgvista_stays_light():
    code = "import sys, surgvista; print(sorted(m for m in ('torch', 'timm', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_seeded_construction_is_a_function_of_the_seed_and_keeps_the_callers_stream():
    torch.manual_seed(1)
    before = torch.get_rng_state()
    with seeded(3):
        a = SurgVISTAStudent("tiny", **GEOM)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(5)
    with seeded(3):
        b = SurgVISTAStudent("tiny", **GEOM)
    torch.manual_seed(3)
    plain = SurgVISTAStudent("tiny", **GEOM)  # what the seed alone gives
    for x, y, z in zip(a.state_dict().values(), b.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(x, y) and torch.equal(x, z)
