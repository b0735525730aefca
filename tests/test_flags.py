import pytest

from scripts.flags import as_flag


@pytest.mark.parametrize("value", [True, 1, "true", "True", " yes ", "on", "1"])
def test_true_spellings(value):
    assert as_flag(value) is True


@pytest.mark.parametrize("value", [False, 0, "false", "False", "no", "off", "0", "", None])
def test_false_spellings(value):
    assert as_flag(value) is False


@pytest.mark.parametrize("value", ["maybe", 2, [True]])
def test_anything_else_is_refused_by_name(value):
    with pytest.raises(ValueError, match="tta must be true or false"):
        as_flag(value, "tta")
