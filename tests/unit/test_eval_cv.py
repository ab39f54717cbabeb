import pytest

from thrifty.errors import DataError
from thrifty.evaluation.cv import kfold, train_test_split
from thrifty.evaluation.dataset import Item, Outcome, OutcomeSet


def _data(n: int) -> OutcomeSet:
    items = [Item("f.jsonl", i, [{"role": "user", "content": f"q{i}"}], ["a", "b", "c"][i % 3],
                  {"m": Outcome("x", 0.1)}, {"m": 1.0}) for i in range(n)]
    return OutcomeSet(items, ["m"])


def test_kfold_test_folds_are_disjoint_from_train_and_cover_everything():
    data = _data(53)
    folds = kfold(data, k=5, seed=3)
    seen: list[int] = []
    for train, test in folds:
        assert not set(train) & set(test)
        assert sorted(train + test) == list(range(53))
        seen.extend(test)
    assert sorted(seen) == list(range(53))


def test_kfold_spreads_each_task_over_the_folds():
    data = _data(60)
    for _, test in kfold(data, k=5):
        tasks = [data.items[i].task for i in test]
        assert {tasks.count(t) for t in "abc"} == {4}


def test_kfold_is_reproducible_and_seeded():
    data = _data(40)
    assert kfold(data, 4, seed=1) == kfold(data, 4, seed=1)
    assert kfold(data, 4, seed=1) != kfold(data, 4, seed=2)


def test_train_test_split_never_leaks():
    data = _data(31)
    train, test = train_test_split(data, 0.3, seed=0)
    assert not set(train) & set(test)
    assert sorted(train + test) == list(range(31))
    assert 0 < len(test) < len(train)


def test_bad_splits_are_data_errors():
    with pytest.raises(DataError):
        kfold(_data(3), k=5)
    with pytest.raises(DataError):
        kfold(_data(10), k=1)
    with pytest.raises(DataError):
        train_test_split(_data(10), 1.5)
