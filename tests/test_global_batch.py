"""The global batch whatever the live worker count (elastic runs): a step on 2 DDP ranks (gloo,
two processes) holding 2 and 1 of the same 3 windows gives the update of one process holding
all 3, because each rank weighs its loss by its share (``Loop``: ``batch_share``,
``MemoryAlignment.loss_weight``). Without the weights the uneven split gives another gradient."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lmc
from lmc.alignment import MemoryAlignment
from lmc.train.loop import batch_share

CFG = lmc.preset("tiny", img_size=32, short_len=9, long_len=9, out_len=3, memory_slots=8,
                 width=0.0625, batch_size=3)


def windows():
    g = torch.Generator().manual_seed(0)
    return torch.rand(CFG.batch_size, CFG.short_len + CFG.out_len, 1, 32, 32, generator=g)


def one_step(model, window, weight: float):
    align = MemoryAlignment(model)
    align.loss_weight = weight
    align.step(window, long_start=2)
    core = model.module if hasattr(model, "module") else model
    return ({n: p.detach().clone() for n, p in core.named_parameters()},
            {n: p.grad.clone() for n, p in core.named_parameters() if p.grad is not None})


def rank_main(rank, world, store, weighted, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.manual_seed(CFG.seed)
        model = torch.nn.parallel.DistributedDataParallel(lmc.LMCModel(CFG),
                                                          find_unused_parameters=True)
        share = batch_share(CFG.batch_size, world, rank)
        first = sum(batch_share(CFG.batch_size, world, r) for r in range(rank))
        weight = world * share / CFG.batch_size if weighted else 1.0
        params, grads = one_step(model, windows()[first:first + share], weight)
        if rank == 0:
            torch.save({"params": params, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


def ddp_step(tmp_path, weighted: bool):
    out = tmp_path / f"ddp-{weighted}.pt"
    store = tmp_path / f"store-{weighted}"
    mp.spawn(rank_main, args=(2, str(store), weighted, str(out)), nprocs=2, join=True)
    return torch.load(out)


def test_shares_cover_the_batch_and_differ_by_at_most_one():
    for batch, world in ((8, 2), (8, 3), (3, 2), (5, 5), (16, 6)):
        shares = [batch_share(batch, world, r) for r in range(world)]
        assert sum(shares) == batch and max(shares) - min(shares) <= 1 and min(shares) >= 1


@pytest.mark.slow
def test_two_ranks_with_an_uneven_split_take_the_one_process_step(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(CFG.seed)
    params, grads = one_step(lmc.LMCModel(CFG), windows(), 1.0)
    ddp = ddp_step(tmp_path, weighted=True)
    assert set(ddp["params"]) == set(params) and set(ddp["grads"]) == set(grads)
    for n in params:        # phase 1's and phase 2's updates
        torch.testing.assert_close(ddp["params"][n], params[n], rtol=1e-5, atol=1e-6)
    for n in grads:         # phase 2's gradient (the global batch's mean)
        torch.testing.assert_close(ddp["grads"][n], grads[n], rtol=1e-4, atol=1e-7)
    # the weights matter: the unweighted mean of the ranks' means is another gradient
    plain = ddp_step(tmp_path, weighted=False)
    assert any(not torch.allclose(plain["grads"][n], grads[n], rtol=1e-3, atol=1e-6)
               for n in grads)
