"""Clip shards (litdata): written from manifests, read back as the same clips, disjoint per worker and rank,
resumable, from a folder or through the remote-URI cache path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import ROOT, exit_status
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from surgvista.cli.shards import main
from surgvista.data.clips import VideoClipDataset
from surgvista.data.manifest import VideoEntry, read_manifest, write_manifest
from surgvista.data.shards import write_shards
from surgvista.data.stream import streaming_clip_dataset
from surgvista.data.transforms import CenterCrop

CLIP = {"num_frames": 4, "sampling_rate": 2}


def shards_main(argv: list[str]) -> int:
    return exit_status(main, argv)


def frame_folder_manifest(root: Path, videos: int = 2, frames: int = 20) -> Path:
    """JPEG frame folders (as surgvista.data.prepare writes them) of a square moving over a gradient."""
    y, x = np.mgrid[0:40, 0:48]
    entries = []
    for v in range(videos):
        folder = root / "frames" / f"v{v}"
        folder.mkdir(parents=True)
        for t in range(frames):
            img = np.stack([x * 5, y * 6, np.full_like(x, 30 * v + 5 * t)], -1).astype(np.uint8)
            img[8:20, t : t + 12] = (240, 240, 20)
            Image.fromarray(img).save(folder / f"{t}.jpg", quality=90)
        entries.append(VideoEntry("synth", f"v{v}", "frames", folder, frames, 1.0))
    return write_manifest(root / "frames.jsonl", entries)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, demo_root):
    """Shards of a frame-folder manifest followed by the demo's video manifest, in small chunks."""
    root = tmp_path_factory.mktemp("shards")
    manifests = [str(frame_folder_manifest(root)), str(demo_root / "train.jsonl")]
    n = write_shards(manifests, str(root / "out"), backend="pyav", chunk_bytes="40KB", **CLIP)
    reference = VideoClipDataset(manifests, CenterCrop(32, normalize=False), **CLIP)
    assert n == len(reference) and len(list((root / "out").glob("chunk-*.bin"))) > 2
    return root / "out", reference


def indices(samples) -> list[int]:
    return [int(i) for s in samples for i in torch.as_tensor(s["index"]).flatten()]


def test_shards_hold_the_manifest_clips(shards):
    out, reference = shards
    frames_part = 40  # the first manifest's samples: frame folders, stored byte for byte
    seen = []
    for sample in streaming_clip_dataset(str(out), CenterCrop(32, normalize=False), **CLIP):
        i = sample["index"]
        expected = reference[i]["video"]
        assert sample["video"].shape == expected.shape == (3, 4, 32, 32) and sample["video"].dtype == torch.uint8
        if i < frames_part:
            assert torch.equal(sample["video"], expected), i
        else:  # demo video frames re-encoded as JPEG q90
            assert (sample["video"].float() - expected.float()).abs().mean() < 3, i
        seen.append(i)
    assert sorted(seen) == list(range(len(reference)))


def test_remote_style_uri_reads_through_the_cache(shards, tmp_path):
    out, reference = shards
    ds = streaming_clip_dataset(f"local:{out}", CenterCrop(32, normalize=False), cache_dir=str(tmp_path), **CLIP)
    got = {s["index"]: s["video"] for s in ds}
    assert sorted(got) == list(range(len(reference)))
    assert torch.equal(got[3], reference[3]["video"])
    assert list(tmp_path.rglob("chunk-*.bin"))  # chunks were fetched into the cache, not read in place


def test_workers_read_disjoint_samples_and_a_resumed_loader_reads_the_rest(shards):
    from litdata import StreamingDataLoader

    from surgvista.data.clips import collate_clips

    out, reference = shards

    def loader():
        ds = streaming_clip_dataset(str(out), CenterCrop(32, normalize=False), shuffle=True, seed=5, **CLIP)
        return StreamingDataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_clips)

    everything = indices(loader())
    assert sorted(everything) == list(range(len(reference)))  # two workers, each sample once
    first = loader()
    it = iter(first)
    head = indices([next(it) for _ in range(4)])
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    rest = indices(resumed)
    assert not set(head) & set(rest) and sorted(head + rest) == list(range(len(reference)))


def test_leakage_guard_reads_the_shards_video_list(shards, demo_root):
    from surgvista.data.leakage import LeakageError
    from surgvista.data.stream import StreamDataModule

    out, _ = shards
    dm = StreamDataModule(str(out), exclude_from=[str(demo_root / "train.jsonl")], input_size=32, **CLIP)
    with pytest.raises(LeakageError, match="2 pre-training video"):
        dm.setup("fit")
    StreamDataModule(str(out), exclude_from=[str(demo_root / "val.jsonl")], input_size=32, **CLIP).setup("fit")


def test_clip_shape_mismatch_is_named(shards):
    out, _ = shards
    ds = streaming_clip_dataset(str(out), CenterCrop(32), num_frames=16, sampling_rate=4)
    with pytest.raises(ValueError, match=r"holds 4-frame clips at stride 2.*data.num_frames=16"):
        next(iter(ds))


def test_cli_refuses_a_non_empty_output_and_leaked_videos(shards, demo_root, tmp_path, capsys):
    out, _ = shards
    assert shards_main([str(ROOT / "nothing.jsonl"), "--out", str(out)]) == 1
    assert "is not empty; pass --overwrite" in capsys.readouterr().err
    manifest = str(demo_root / "train.jsonl")
    assert shards_main([manifest, "--out", str(tmp_path / "new"), "--exclude-from", manifest]) == 1
    assert "2 pre-training video(s) are downstream evaluation videos" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


class RecordIndices(L.LightningModule):
    """Records the sample indices each rank trains on."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out, self.w, self.seen = out, torch.nn.Parameter(torch.zeros(())), []

    def training_step(self, batch, _):
        self.seen += batch["index"].tolist()
        return self.w * batch["video"].float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self) -> None:
        Path(self.out, f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))


@pytest.mark.slow
def test_ddp_sim_ranks_read_disjoint_samples(shards, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    out, reference = shards
    os.environ.setdefault("PROJECT_ROOT", str(ROOT))
    overrides = [
        "trainer=ddp_sim",
        "data=pretrain_stream",
        f"data.train_shards={out}",
        "data.input_size=32",
        "data.num_frames=4",
        "data.sampling_rate=2",
        "data.batch_size=2",
        "data.num_workers=1",
        f"paths.output_dir={tmp_path}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.data)
    trainer = instantiate(
        cfg.trainer,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(RecordIndices(str(tmp_path)), datamodule=datamodule)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) >= len(reference) // 2 - 4  # litdata evens out the ranks
    assert not set(ranks[0]) & set(ranks[1])
    assert len(set(ranks[0] + ranks[1])) == len(ranks[0]) + len(ranks[1])


def test_fit_resumed_mid_epoch_trains_on_the_samples_an_uninterrupted_fit_would(shards, tmp_path):
    from surgvista.data.stream import StreamDataModule

    out, _ = shards

    def fit(run: str, ckpt_path=None, **trainer_args) -> list[int]:
        (tmp_path / run).mkdir()
        dm = StreamDataModule(str(out), input_size=32, batch_size=3, num_workers=0, pin_memory=False, seed=7, **CLIP)
        module = RecordIndices(str(tmp_path / run))
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **trainer_args,
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        return module.seen

    every4 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, filename="{step}")
    whole = fit("whole", callbacks=[every4])
    tail = fit("tail", ckpt_path=str(tmp_path / "ckpt" / "step=4.ckpt"), enable_checkpointing=False)
    assert len(whole) > 24 and tail == whole[12:]  # 4 batches of 3 before the checkpoint


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_bad_video_stops_the_writer_or_is_left_out(demo_root, tmp_path, capsys, policy):
    entries = read_manifest(demo_root / "train.jsonl").entries
    data = entries[1].source.read_bytes()
    entries[1].source = tmp_path / "truncated.mp4"
    entries[1].source.write_bytes(data[: len(data) // 3])
    manifest = str(write_manifest(tmp_path / "m.jsonl", entries))
    out = tmp_path / "out"
    args = [manifest, "--out", str(out), "--num-frames", "4", "--sampling-rate", "2", "--on-bad-video", policy]
    code = shards_main(args)
    good = VideoClipDataset([demo_root / "train.jsonl"], CenterCrop(32), **CLIP).entries[0].num_frames
    if policy == "error":
        assert code == 1 and not (out / "index.json").exists()
        assert f"{entries[1].num_frames} clip(s) could not be read, e.g. demo/video02" in capsys.readouterr().err
    else:
        assert code == 0 and f"wrote {good} clips" in capsys.readouterr().out
        ds = streaming_clip_dataset(str(out), CenterCrop(32), **CLIP)
        assert sorted(s["index"] for s in ds) == list(range(good))
