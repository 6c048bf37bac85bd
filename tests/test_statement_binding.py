"""The read and write paths bind a statement's arguments as SQLAlchemy would
(models/reads.py, AsyncpgCompiler): the same SQL and the same positional arguments
as ``construct_params`` gives, whether through the plan kept per statement or not."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import BigInteger, Executable, String, bindparam, func, literal, select
from sqlalchemy.exc import InvalidRequestError

from models.accounts import BEARER
from models.images import catalogued_listing
from models.reads import AsyncpgCompiler
from models.tables import Image
from models.writes import ExpandingCompiler


def constructed(compiler: AsyncpgCompiler, statement: Executable, values: dict[str, Any]) -> Any:
    """What construct_params alone gives: the path without a plan."""
    compiled = compiler._compile(statement)
    bound = compiled.construct_params(dict(values))
    return compiled.string, [bound[name] for name in compiled.positiontup or ()]


REPEATED = (
    select(Image.image_id, (Image.size * literal(1_000)).label("scaled"))
    .where(Image.zone == bindparam("zone", type_=String))
    .where(Image.owner == bindparam("owner", type_=String))
    .where(Image.zone != func.lower(bindparam("zone", type_=String)))
    .limit(bindparam("head", type_=BigInteger, value=7, required=False))
)


@pytest.mark.parametrize("compiler_type", [AsyncpgCompiler, ExpandingCompiler])
@pytest.mark.parametrize(
    "statement, values",
    [
        (REPEATED, {"zone": "ac1", "owner": "usr-1", "head": 3}),
        (REPEATED, {"zone": "ac1", "owner": "usr-1"}),  # head's own value
        (catalogued_listing().first_with_keys, {"zone": "ac1", "digest": "d", "head": 5100}),
        (select(BEARER), {"digest": "d", "unused": 1}),
    ],
)
def test_arguments_are_those_construct_params_gives(
    compiler_type: type[AsyncpgCompiler], statement: Executable, values: dict[str, Any]
) -> None:
    compiler = compiler_type()
    expected = constructed(compiler_type(), statement, values)
    assert compiler.bind(statement, values) == expected
    assert compiler.bind(statement, values) == expected  # the kept plan, a second time
    assert list(compiler._plans.values()) != [None], "no plan kept: the test would not test it"
    sql, arguments = expected
    assert len(arguments) == max(int(n) for n in re.findall(r"\$(\d+)", sql))


def test_a_missing_value_is_sqlalchemys_error() -> None:
    compiler = AsyncpgCompiler()
    with pytest.raises(InvalidRequestError, match="owner"):
        compiler.bind(REPEATED, {"zone": "ac1"})
