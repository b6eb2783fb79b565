"""Kept-library replacements of hand-written code give the same numbers as the code they replaced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from surgvista.checkpoints.grids import interpolate_pos_embed
from surgvista.modules.pretrain import total_grad_norm


def _reference_interpolation(table, src, dst):
    """The former hand-written resize: bicubic over (H, W) per frame (no antialiasing), then linear over T."""
    (t0, h0, w0), (t1, h1, w1), dim = src, dst, table.shape[-1]
    x = table.float().reshape(t0, h0, w0, dim).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(h1, w1), mode="bicubic", align_corners=False)
    x = x.permute(1, 2, 3, 0).reshape(1, dim * h1 * w1, t0)
    x = F.interpolate(x, size=t1, mode="linear", align_corners=False)
    return x.reshape(dim, h1, w1, t1).permute(3, 1, 2, 0).reshape(1, t1 * h1 * w1, dim)


@pytest.mark.parametrize(("src", "dst"), [((4, 6, 6), (8, 9, 9)), ((8, 14, 14), (4, 7, 10))])
def test_timm_resampled_tables_equal_the_former_interpolation(src, dst):
    table = torch.randn(1, src[0] * src[1] * src[2], 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(interpolate_pos_embed(table, src, dst), _reference_interpolation(table, src, dst))


def test_total_grad_norm_is_the_l2_norm_of_all_gradients(tmp_path):
    grads = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate([(3, 4), (5,), (2, 2)])]
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))
    torch.testing.assert_close(total_grad_norm(grads), expected)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:  # FSDP1 shards: squares summed over ranks (one rank here: unchanged)
        torch.testing.assert_close(total_grad_norm(grads, plain_sharded=True), expected)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (1,))  # FSDP2 shards (DTensor), alone and mixed with plain tensors
        sharded = [distribute_tensor(g, mesh, [Shard(0)]) for g in grads]
        torch.testing.assert_close(total_grad_norm(sharded), expected)
        torch.testing.assert_close(total_grad_norm([sharded[0], *grads[1:]]), expected)
    finally:
        torch.distributed.destroy_process_group()
