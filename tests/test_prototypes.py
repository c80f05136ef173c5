import pytest
import torch
import torch.nn.functional as F

from capsmm.errors import ConfigError
from capsmm.prototypes import PrototypeHead


def test_cosine_scores_are_cosine_over_temperature():
    head = PrototypeHead(5, [8, 8, 8], "cosine", temperature=0.2)
    patterns = [torch.randn(4, 8) for _ in range(3)]
    m = torch.cat(patterns, 1)
    expected = torch.stack([F.cosine_similarity(m, mu.expand_as(m), dim=1) for mu in head.weight], 1) / 0.2
    torch.testing.assert_close(head(patterns), expected)


def test_cosine_scores_ignore_pattern_scale_template_scores_do_not():
    cosine, template = PrototypeHead(3, [6], "cosine"), PrototypeHead(3, [6], "template")
    m = torch.randn(2, 6)
    torch.testing.assert_close(cosine([3 * m]), cosine([m]))
    torch.testing.assert_close(template([3 * m]), 3 * template([m]))
    torch.testing.assert_close(template([m]), m @ template.weight.T)


@pytest.mark.parametrize("kind", ["cosine", "template"])
def test_scores_of_a_subset_use_only_those_prototype_slices(kind):
    head = PrototypeHead(4, [5, 7, 3], kind)
    patterns = [torch.randn(2, d) for d in (5, 7, 3)]
    partial = PrototypeHead(4, [5, 3], kind)
    with torch.no_grad():
        partial.weight.copy_(torch.cat([head.weight[:, :5], head.weight[:, 12:]], 1))
    torch.testing.assert_close(head([patterns[0], patterns[2]], [0, 2]), partial([patterns[0], patterns[2]]))


def test_wrong_pattern_width_is_an_error():
    head = PrototypeHead(4, [5, 7])
    with pytest.raises(ValueError, match="width 6, expected 7"):
        head([torch.randn(2, 5), torch.randn(2, 6)])


def test_bad_head_settings_are_config_errors():
    with pytest.raises(ConfigError, match="valid: cosine, template"):
        PrototypeHead(3, [4], "dot")
    with pytest.raises(ConfigError, match="temperature"):
        PrototypeHead(3, [4], "cosine", temperature=0)
