"""shaders/lib helpers on their case table (each through the kernels that include it)."""

import pytest

from conftest import case_params
from wsvk.kernels import cases


@pytest.mark.parametrize("case", case_params(cases.LIB))
def test_case(rt, guard, case):
    case.run()
