import pytest

from scripts.utils.flags import as_flag


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


def test_a_switch_argument_reaches_the_constructor_as_a_bool():
    from scripts.utils.flags import switches

    class Component:
        @switches(verbose="verbose", tta="tta")
        def __init__(self, name, verbose=False, tta="false"):
            self.name, self.verbose, self.tta = name, verbose, tta

    made = Component("a", verbose="false")
    assert made.verbose is False and made.tta is False  # defaults are converted too
    assert Component("b", "true", tta="on").verbose is True
    with pytest.raises(ValueError, match="verbose must be true or false"):
        Component("c", verbose="sometimes")


def test_switches_refuses_an_argument_the_constructor_does_not_have():
    from scripts.utils.flags import switches

    with pytest.raises(TypeError, match="no argument"):

        class Broken:
            @switches(missing="missing")
            def __init__(self, present=False):
                pass
