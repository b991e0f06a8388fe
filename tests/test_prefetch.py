"""selfsup.prefetch: the next step's views made ahead are exactly the views made in turn.

(Exact resume with prefetching on is tests/test_train.py's resume tests: the loop prefetches on
the CPU by default.)"""

import pytest
import torch

from selfsup.augment import TwoViews
from selfsup.prefetch import epoch_views, resolve_mode, step_seed

N, BATCH, STEPS = 24, 6, 4


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (N, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def all_views(images, mode, epoch_seed=7, perm=None, **kw):
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1)) if perm is None else perm
    return list(epoch_views(TwoViews("simclr", 16), images, perm, BATCH, STEPS, epoch_seed, mode=mode, **kw))


def assert_same(a, b):
    assert len(a) == len(b)
    for (a1, a2), (b1, b2) in zip(a, b):
        assert torch.equal(a1, b1) and torch.equal(a2, b2)


def test_worker_thread_gives_the_views_made_in_turn(images):
    assert_same(all_views(images, "thread"), all_views(images, "off"))
    assert_same(all_views(images, "thread", aug_threads=2), all_views(images, "off"))


def test_a_step_depends_on_its_seed_and_batch_alone(images):
    """What a resumed run relies on: step i's views come from (epoch seed, i) and its images,
    not from any generator state left by the steps before it."""
    full = all_views(images, "thread")
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(step_seed(7, 2))
    alone = TwoViews("simclr", 16)(images[perm[2 * BATCH : 3 * BATCH]], generator=gen)
    assert_same([alone], full[2:3])
    assert not torch.equal(full[0][0], full[1][0])  # the steps differ
    assert not torch.equal(all_views(images, "thread", epoch_seed=8)[0][0], full[0][0])  # so do epochs


def test_each_image_draws_its_own_views_when_prefetched(images):
    same = images[:1].expand(N, -1, -1, -1).contiguous()  # one image, N times
    v1, v2 = all_views(same, "thread")[0]
    assert not any(torch.equal(v1[0], v1[j]) for j in range(1, BATCH))
    assert not any(torch.equal(v1[j], v2[j]) for j in range(BATCH))


def test_the_step_and_the_worker_share_the_threads_for_one_epoch(images):
    before = torch.get_num_threads()
    perm = torch.randperm(N)
    stream = epoch_views(TwoViews("simclr", 16), images, perm, BATCH, STEPS, 7, mode="thread", aug_threads=1)
    next(stream)
    assert torch.get_num_threads() == max(1, before - 1)  # the step's share while the worker runs
    list(stream)
    assert torch.get_num_threads() == before  # given back when the epoch ends


def test_modes_are_checked():
    assert resolve_mode("auto", torch.device("cpu")) == "off"
    with pytest.raises(ValueError, match="prefetch mode: expected one of"):
        resolve_mode("workers", torch.device("cpu"))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_mode("stream", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_side_stream_gives_the_views_made_in_turn(images):
    cuda = images.cuda()
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1)).cuda()
    assert_same(all_views(cuda, "stream", perm=perm), all_views(cuda, "off", perm=perm))
