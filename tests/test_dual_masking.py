"""VideoMAE V2 dual masking (``model.decoder_mask_ratio``): the running cell, the decoder subset, the student's
pixel decoder and the loss on it, the module's randomness and a short pre-training run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import compose, small_demo_overrides, tiny_pretrain_module

from surgvista.layers.masking import DecoderMask, MaskGenerator, positions_mask, running_cell, token_order
from surgvista.models.student import SurgVISTAStudent
from surgvista.modules.objective import SurgVISTALoss, pixel_targets
from surgvista.modules.pretrain import PretrainModule


def test_running_cell_keeps_its_share_of_every_cell_and_runs_over_time():
    grid = (6, 4, 6)
    offset = torch.tensor([0, 1, 2, 3])
    for ratio, kept in ((0.25, 3), (0.5, 2), (0.75, 1)):
        keep = running_cell(grid, ratio, offset).view(4, 6, 2, 2, 3, 2)  # (B, T, cell row, h%2, cell col, w%2)
        assert (keep.sum((3, 5)) == kept).all()  # every 2x2 cell keeps 4·(1-ratio) positions at every time
        assert keep[:, :4].sum(1).eq(kept).all()  # over 4 time steps every position is kept equally often
    keep = running_cell(grid, 0.5, offset).view(4, 6, 4, 6)
    # t = 0, phase 0: the cell's first two positions in the running order, (0, 0) and (0, 1): the even rows.
    assert keep[0, 0, 0].all() and not keep[0, 0, 1].any()
    # one time step later the pattern is the one of the next phase: it runs around the cell
    assert torch.equal(keep[0, 1], keep[1, 0]) and torch.equal(keep[1, 1], keep[2, 0])
    assert not torch.equal(keep[0, 0], keep[0, 1])
    odd = running_cell((2, 3, 5), 0.5, torch.tensor([0]))  # border cells of an odd grid are cut
    assert odd.shape == (1, 30)


@pytest.mark.parametrize(("kind", "ratio"), [("tube", 0.75), ("tube", 0.9), ("random", 0.6)])
def test_decoder_subset_is_a_fixed_count_of_masked_tokens_preferring_the_cell(kind, ratio):
    grid = (4, 6, 6)
    gen = torch.Generator().manual_seed(0)
    mask = MaskGenerator(kind, ratio)(8, grid, generator=gen)
    n_masked = MaskGenerator(kind, ratio).num_masked(grid)
    masked = token_order(mask, n_masked)[1]
    dec = DecoderMask(0.5)
    state = gen.get_state()
    pos = dec(masked, grid, gen)
    k = dec.num_decoded(n_masked)
    assert k == n_masked - int(0.5 * n_masked) and pos.shape == (8, k)
    assert (pos.diff(dim=1) > 0).all()  # ascending, no repeats
    assert mask.gather(1, pos).all()  # only masked tokens are decoded
    # the same random numbers, drawn in the same order, give the cell's phase: rebuild it to check the priority
    replay = torch.Generator().manual_seed(0)
    replay.set_state(state)
    cell = running_cell(grid, 0.5, torch.randint(0, 4, (8,), generator=replay))
    for b in range(8):
        both = (mask[b] & cell[b]).sum().item()
        in_cell = cell[b, pos[b]].sum().item()
        assert in_cell == min(both, k)  # masked tokens the cell keeps come first, the others only fill the count
    again = torch.Generator().manual_seed(0)
    again.set_state(state)
    assert torch.equal(dec(masked, grid, again), pos)  # a function of the generator only
    with pytest.raises(ValueError, match="decoder mask ratio must be one of"):
        DecoderMask(0.6)


def _demo_step_inputs(seed: int = 0):
    torch.manual_seed(seed)
    module = tiny_pretrain_module(decoder_mask_ratio=0.5)
    video = torch.randn(2, 3, 4, 32, 32)
    s = module.student
    mask = module.masking(2, s.token_grid, generator=torch.Generator().manual_seed(1))
    n_masked = module.masking.num_masked(s.token_grid)
    return module, video, mask, n_masked


def test_pixel_decoder_sees_visible_plus_decoded_tokens_and_matches_a_direct_computation():
    module, video, mask, n_masked = _demo_step_inputs()
    s = module.student.eval()
    pos = module.decoder_positions(mask, n_masked, torch.Generator().manual_seed(2))
    n_vis, k = mask.shape[1] - n_masked, module.decoder_masking.num_decoded(n_masked)
    seen = []
    hook = s.decoder_vid.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    image_pred, pixel_pred = s(video, mask, n_masked, pos)
    hook.remove()
    assert seen == [(2, n_vis + k, s.decoder_vid.head.in_features)]
    assert pixel_pred.shape == (2, k, s.pixel_dim) and image_pred.shape[1] == n_masked
    # direct: visible tokens projected + their table rows, then mask tokens at the decoded positions only
    visible = token_order(mask, n_masked)[0]
    latent = s.forward_encoder(video, mask, n_masked)
    pe = s.pos_embed_vid.expand(2, -1, -1)
    rows = torch.arange(2).unsqueeze(1)
    x = torch.cat([s.down_vid(latent) + pe[rows, visible], s.mask_token_vid + pe[rows, pos]], dim=1)
    for blk in s.decoder_vid.blocks:
        x = blk(x)
    expected = s.decoder_vid.head(s.decoder_vid.norm(x[:, -k:]))
    torch.testing.assert_close(pixel_pred, expected)
    full_img, _ = s(video, mask, n_masked)
    torch.testing.assert_close(image_pred, full_img)  # the image decoder keeps every masked token


def test_loss_is_taken_on_the_decoded_tokens_only():
    module, video, mask, n_masked = _demo_step_inputs()
    pos = module.decoder_positions(mask, n_masked, torch.Generator().manual_seed(2))
    k = pos.shape[1]
    pixel_pred = torch.randn(2, k, 1536)
    image_pred = torch.randn(2, n_masked, 192)
    teacher = torch.randn(2, mask.shape[1], 192)
    out = module.loss(video, mask, pixel_pred, image_pred, teacher, 2, 16, n_masked, pos)
    decoded = positions_mask(pos, mask.shape[1])
    target = pixel_targets(video, 2, 16)[decoded].view(2, k, -1)  # boolean selection: ascending positions
    torch.testing.assert_close(out["loss_pixel"], F.mse_loss(pixel_pred, target))
    distill = F.smooth_l1_loss(image_pred, teacher[mask].view(2, n_masked, 192))
    torch.testing.assert_close(out["loss_distill"], distill)
    torch.testing.assert_close(out["loss"], out["loss_pixel"] + 0.05 * distill)


def _step_outputs(module, video, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(0)  # drop-path and the like: the same in both runs
    out = module._shared_step(video, gen)
    return out, gen.get_state()


def test_off_is_bit_identical_to_the_step_without_the_knob():
    torch.manual_seed(0)
    module = tiny_pretrain_module()
    for ratio in (None, 0):
        other = tiny_pretrain_module(decoder_mask_ratio=ratio)
        other.load_state_dict(module.state_dict())
        assert other.decoder_masking is None
    video = torch.randn(2, 3, 4, 32, 32)
    out, state = _step_outputs(module, video, 3)
    # the step as it was before the knob: mask, student, teacher, loss (nothing else drawn from the generator)
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    s = module.student
    mask = module.masking(2, s.token_grid, generator=gen)
    n = module.masking.num_masked(s.token_grid)
    image_pred, pixel_pred = s(video, mask, n)
    ref = module.loss(video, mask, pixel_pred, image_pred, module.teacher(video), 2, 16, n)
    assert torch.equal(gen.get_state(), state) and out["decoded"] is None
    for key in ("loss", "loss_pixel", "loss_distill"):
        assert torch.equal(out[key], ref[key]), key
    assert torch.equal(out["pixel_pred"], pixel_pred)


def test_dual_masking_in_the_module_replays_from_the_mask_generator():
    module, video, _, n_masked = _demo_step_inputs()
    module.eval()
    out, state = _step_outputs(module, video, 5)
    again, _ = _step_outputs(module, video, 5)
    k = module.decoder_masking.num_decoded(n_masked)
    assert out["decoded"].shape == (2, k) and out["pixel_pred"].shape[1] == k
    assert torch.equal(out["decoded"], again["decoded"]) and torch.equal(out["loss"], again["loss"])
    other, _ = _step_outputs(module, video, 6)
    assert not torch.equal(other["decoded"], out["decoded"])
    assert out["mask"].gather(1, out["decoded"]).all()
    student = SurgVISTAStudent("tiny", img_size=32, num_frames=4, teacher_dim=192, pixel_decoder=False)
    with pytest.raises(ValueError, match="needs the pixel decoder"):
        PretrainModule(student, module.teacher, SurgVISTALoss(), MaskGenerator(), batch_size=2, decoder_mask_ratio=0.5)


def test_demo_pretraining_with_dual_masking_runs_and_its_loss_decreases(demo_root, tmp_path):
    import csv

    from hydra.utils import instantiate

    from surgvista.run import train

    overrides = [*small_demo_overrides(demo_root), "model.decoder_mask_ratio=0.5", "callbacks.rich_progress_bar=null"]
    cfg = compose("demo", *overrides, out=tmp_path)
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "csv" / "version_0" / "metrics.csv").open()))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert list((tmp_path / "train_reconstruction").glob("*.png"))  # the panel shows the decoded tokens
    # a few steps on one batch from the composed config: finite and decreasing
    torch.manual_seed(0)
    module = instantiate(cfg.model)
    assert module.decoder_masking.ratio == 0.5
    video = torch.randn(2, 3, cfg.data.num_frames, cfg.data.input_size, cfg.data.input_size)
    opt = torch.optim.AdamW(module.student.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(8):
        loss = module._shared_step(video, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(loss.item())
    assert all(torch.isfinite(torch.tensor(seen))) and sum(seen[-3:]) / 3 < seen[0], seen


def test_decoder_mask_ratio_outside_the_running_cell_shares_is_one_config_error():
    from surgvista.utils.config_check import check_config
    from surgvista.utils.errors import ConfigError

    check_config(compose("demo", "model.decoder_mask_ratio=0.5"))
    with pytest.raises(ConfigError, match=r"model\.decoder_mask_ratio=0\.6: expected one of \[0, 0\.25, 0\.5, 0\.75\]"):
        check_config(compose("demo", "model.decoder_mask_ratio=0.6"))


def test_bench_compares_dual_masking_off_and_on_in_one_run(capsys):
    from surgvista.bench.__main__ import main

    off, on = main(["pretrain", "--preset", "tiny", "--batch", "1", "--steps", "2", "--warmup", "1", "--threads", "1",
                    "--compare", "dual-mask"])  # fmt: skip
    out = capsys.readouterr().out
    assert off.config["decoder_mask_ratio"] is None and on.config["decoder_mask_ratio"] == 0.5
    assert "[dual-mask] step speed-up of decoder_mask_ratio=0.5 over dual masking off:" in out
    assert on.model_tflop_per_step < off.model_tflop_per_step  # the pixel decoder does less work
