"""Input files dealt onto shards by size: a big dump gets a shard of its own, every shard gets work."""
from pathlib import Path

from saul.data.extract import InputFile
from saul.data.pipeline import deal_shards


def _files(sizes):
    return [InputFile(0, Path(f"f{i}"), f"f{i}", "jsonl", size, 0) for i, size in enumerate(sizes)]


def test_a_big_file_gets_its_own_shard_and_the_rest_is_balanced():
    files = _files([100] * 40 + [5000] + [100] * 40)
    shards = deal_shards(files, 4)
    assert sorted(i for shard in shards for i, _ in shard) == list(range(len(files)))  # each file once
    big = next(shard for shard in shards if any(i == 40 for i, _ in shard))
    assert [i for i, _ in big] == [40]
    loads = [sum(f.size for _, f in shard) for shard in shards if shard is not big]
    assert max(loads) - min(loads) <= 100
    assert all(shard == sorted(shard, key=lambda item: item[0]) for shard in shards)  # input order inside
    assert deal_shards(files, 4) == shards  # deterministic: a resumed prepare finds the same shards


def test_every_shard_gets_a_file_when_there_are_enough():
    shards = deal_shards(_files([0, 7, 3, 3, 9, 1]), 6)
    assert all(len(shard) == 1 for shard in shards)
