import pytest
import torch

from capsmm.retrieval import retrieval_metrics


def test_perfect_codes_give_recall_and_map_one():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    codes = torch.eye(3)[labels]
    assert retrieval_metrics(codes, labels, codes + 0.01, labels) == pytest.approx({"recall@1": 1.0, "map": 1.0})


def test_average_precision_by_hand():
    # one query of class 0; items ranked by similarity: [rel, not, rel, not] -> AP = (1/1 + 2/3) / 2
    query = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]])
    result = retrieval_metrics(query, torch.tensor([0]), items, torch.tensor([0, 1, 0, 1]))
    assert result["recall@1"] == 1.0
    assert result["map"] == pytest.approx((1 + 2 / 3) / 2)


def test_uninformative_codes_give_chance_map():
    torch.manual_seed(0)
    labels = torch.arange(10).repeat(50)
    result = retrieval_metrics(torch.randn(500, 10), labels, torch.randn(500, 10), labels)
    assert 0.05 < result["map"] < 0.15 and result["recall@1"] < 0.2
