"""One file digest, one content digest and one cache-key function for both feature caches; the keys of existing
caches are unchanged (the frame cache, ``surgvista.features.frames``, and the clip cache, ``…features.clips``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from surgvista.features.clips import clip_cache_key
from surgvista.features.digest import content_digest, folder_digest, payload_key
from surgvista.features.frames import cache_key
from surgvista.features.runtime import autocast, torch_device
from surgvista.utils.io import sha256_file


def fixed_inputs(root: Path) -> dict:
    """A checkpoint file, an HF-style folder and two manifests of one tiny "video", all with fixed bytes (the
    manifests name the video relatively, so nothing depends on ``root``)."""
    (root / "w.pt").write_bytes(b"surgvista weights\n")
    (root / "hf" / "sub").mkdir(parents=True)
    (root / "hf" / "config.json").write_bytes(b'{"a": 1}')
    (root / "hf" / "sub" / "model.safetensors").write_bytes(b"0123")
    (root / "v.mp4").write_bytes(b"not a real video")
    row = {"dataset": "demo", "video_id": "v", "format": "video", "source": "v.mp4", "fps": 1.0, "num_frames": 3,
           "labels": {"phase": [0, 1, 1]}, "sha256": "ab" * 32}  # fmt: skip
    (root / "train.jsonl").write_text(json.dumps({"_meta": {"version": 1}}) + "\n" + json.dumps(row) + "\n")
    (root / "val.jsonl").write_text(json.dumps({**row, "video_id": "w"}) + "\n")
    weights = str(root / "w.pt")
    return {"weights": weights, "hf": str(root / "hf"),
            "backbone": {"_target_": "pkg.Backbone", "weights": weights, "layers": [weights, 3], "dim": 8}}  # fmt: skip


def test_cache_keys_are_those_of_the_caches_written_before(tmp_path):
    """Regression guard: the values below were computed by the code on main before the digest module existed
    (``features/frames.py`` ``cache_key`` / ``features/clips.py`` ``clip_cache_key`` of commit d9b798a, run on
    exactly these inputs), so caches written by that code are found again."""
    x = fixed_inputs(tmp_path)
    assert cache_key({"backbone": x["backbone"], "ckpt": x["weights"], "seed": 2}) == "8371bfaad1fd6e64"
    assert cache_key({"backbone": x["backbone"], "ckpt": x["hf"], "ckpt_prefix": "net."}) == "dce09041087e4465"
    assert cache_key({"backbone": {"_target_": "pkg.Backbone"}}) == "4d90ff8441f6affc"
    source = SimpleNamespace(
        manifests=lambda: {"train": str(tmp_path / "train.jsonl"), "val": str(tmp_path / "val.jsonl"), "test": None},
        hparams={"label": "phase", "num_classes": 7, "num_frames": 4, "input_size": 32},
    )
    storage = {"max_tokens": 8, "token_dtype": "float16", "shard_size": 64}
    assert clip_cache_key({**x["backbone"], "hf": x["hf"]}, source, storage) == "d4616a4eb91e5666"


def test_content_digest_replaces_files_and_folders_by_their_contents(tmp_path):
    x = fixed_inputs(tmp_path)
    weights = hashlib.sha256(b"surgvista weights\n").hexdigest()
    assert sha256_file(x["weights"]) == sha256_file(x["weights"], chunk=3) == weights
    assert folder_digest(x["hf"]) == {
        "dir_sha256": {
            "config.json": hashlib.sha256(b'{"a": 1}').hexdigest(),
            "sub/model.safetensors": hashlib.sha256(b"0123").hexdigest(),
        }
    }
    value = {"w": x["weights"], "list": (x["hf"], "", "no/such/file", 1), 2: None}
    assert content_digest(value) == {
        "w": {"file_sha256": weights},
        "list": [folder_digest(x["hf"]), "", "no/such/file", 1],
        "2": None,
    }
    assert content_digest(value, folders=False)["list"][0] == x["hf"]  # the frame cache's settings keep folder paths
    assert payload_key({"b": 1, "a": Path("p")}) == hashlib.sha256(b'{"a": "p", "b": 1}').hexdigest()[:16]


def test_device_and_autocast_from_their_setting_strings():
    assert torch_device("cpu") == torch.device("cpu")
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), "bfloat16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(AttributeError):
        autocast(torch.device("cpu"), "float99")
