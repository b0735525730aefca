"""Specification of the positive-share schedule (scripts/data/sampling.py)."""

import pytest
from torch.utils.data import DistributedSampler

from scripts.data.sampling import PositiveShareSampler, SeededDataset, positive_share

DATA = [{"positive": i < 20} for i in range(100)]  # 20% positive


def draw(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def share_of_positives(indices):
    return sum(DATA[i]["positive"] for i in indices) / len(indices)


def test_schedule_moves_linearly_from_start_to_end_and_stays():
    assert [positive_share(e, 0.8, 0.4, 5) for e in (1, 3, 5, 9)] == pytest.approx([0.8, 0.6, 0.4, 0.4])


def test_each_epoch_has_the_scheduled_share_of_positive_images():
    sampler = PositiveShareSampler(DATA, start_share=0.8, end_share=0.4, schedule_epochs=3)
    assert share_of_positives(draw(sampler, 1)) == pytest.approx(0.8)
    assert share_of_positives(draw(sampler, 2)) == pytest.approx(0.6)
    assert share_of_positives(draw(sampler, 7)) == pytest.approx(0.4)


def test_positives_are_cycled_without_repeats_within_a_pass():
    indices = draw(PositiveShareSampler(DATA, start_share=0.4, end_share=0.4), 1)
    positives = [i for i in indices if DATA[i]["positive"]]
    assert sorted(positives) == sorted(list(range(20)) * 2)  # 40 needed from 20: each exactly twice


def test_epoch_size_is_configurable():
    sampler = PositiveShareSampler(DATA, num_samples=30)
    assert len(draw(sampler, 1)) == 30 == len(sampler)


def test_draws_are_deterministic_per_seed_and_epoch():
    a, b = PositiveShareSampler(DATA, seed=1), PositiveShareSampler(DATA, seed=1)
    assert draw(a, 2) == draw(b, 2)
    assert draw(a, 2) != draw(a, 3)
    assert draw(a, 2) != draw(PositiveShareSampler(DATA, seed=2), 2)


def test_ranks_split_one_epoch_without_overlap():
    ranks = [PositiveShareSampler(DATA, num_replicas=3, rank=r, num_samples=90) for r in range(3)]
    parts = [draw(sampler, 1) for sampler in ranks]
    assert all(len(part) == 30 for part in parts)
    assert sorted(sum(parts, [])) == sorted(ranks[0].epoch_indices())


def test_it_is_a_distributed_sampler_so_trainers_set_its_epoch():
    assert isinstance(PositiveShareSampler(DATA), DistributedSampler)


def test_items_without_positive_flags_are_shuffled_uniformly():
    data = [{"image": f"{i}.dcm"} for i in range(10)]
    assert sorted(draw(PositiveShareSampler(data), 1)) == list(range(10))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="start_share"):
        PositiveShareSampler(DATA, start_share=1.2)
    with pytest.raises(ValueError, match="no positive"):
        PositiveShareSampler([{"positive": False}] * 3)


def test_keyed_draws_pair_the_same_indices_with_seeds_fixed_by_seed_epoch_and_position():
    plain, keyed = PositiveShareSampler(DATA, seed=1), PositiveShareSampler(DATA, seed=1, keyed=True)
    pairs = draw(keyed, 2)
    assert [index for _, index in pairs] == draw(plain, 2)
    assert pairs == draw(PositiveShareSampler(DATA, seed=1, keyed=True), 2)
    seeds = [seed for seed, _ in pairs]
    assert len(set(seeds)) == len(seeds)  # an image drawn twice in an epoch is augmented twice, differently
    assert set(seeds).isdisjoint(seed for seed, _ in draw(keyed, 3))


def test_ranks_get_disjoint_keys():
    ranks = [PositiveShareSampler(DATA, num_replicas=2, rank=r, keyed=True) for r in (0, 1)]
    a, b = draw(ranks[0], 1), draw(ranks[1], 1)
    assert set(a).isdisjoint(b) and len(a) == len(b) == 50


def test_seeded_dataset_reseeds_the_transforms_from_the_key():
    from monai.data import Dataset
    from monai.transforms import Lambda, RandLambda

    class Draw(RandLambda):
        def __call__(self, data):
            return float(self.R.rand())

    dataset = SeededDataset(Dataset(list(range(4)), transform=[Lambda(lambda x: x), Draw(func=None)]))
    assert dataset[(5, 1)] == dataset[(5, 1)] != dataset[(6, 1)]
    assert len(dataset) == 4 and isinstance(dataset[2], float)
    with pytest.raises(TypeError, match="no randomizable"):
        SeededDataset(list(range(3)))
