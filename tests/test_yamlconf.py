"""The YAML front end on a schema that is not the config: a small runbook, as the runbook
loader will declare it. Problems are `FILE:LINE: key.path: message` lines found through the
path-to-line index; the valid file comes back as the model."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from console.yamlconf import (
    DocumentError,
    Duration,
    FilePath,
    Loc,
    entries,
    integer,
    line_at,
    load_document,
    null_means,
    problem,
    raise_all,
    show,
    text,
    where,
)


class Step(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_by_alias=True, validate_by_name=True, title="step"
    )

    id: Annotated[str, text("a step id")]
    kind: Annotated[str, text("check or mutate", choices=("check", "mutate"))]
    within_s: Duration = Field(default=300.0, validation_alias="within")
    retries: Annotated[int, integer(0, 5)] = 0


class Runbook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="runbook")

    id: Annotated[str, text("a runbook id")]
    title: Annotated[str, text("a title")]
    script: FilePath | None = None
    steps: Annotated[tuple[Step, ...], null_means(())]

    @model_validator(mode="wrap")
    @classmethod
    def _unique_step_ids(
        cls, data: Any, handler: ModelWrapValidatorHandler[Runbook], info: ValidationInfo
    ) -> Runbook:
        first: dict[str, int] = {}
        found: list[tuple[Loc, object, Any]] = []
        for i, step_id in entries(data.get("steps") if isinstance(data, dict) else (), "id"):
            if not isinstance(step_id, str):
                continue
            if step_id in first:
                at = where(info, ("steps", first[step_id]))
                found.append(
                    (
                        ("steps", i, "id"),
                        step_id,
                        problem(f"{show(step_id)} repeats (first at {at})"),
                    )
                )
            first.setdefault(step_id, i)
        try:
            runbook = handler(data)
        except ValidationError as error:
            raise_all(error, found, cls.__name__)
        if found:
            raise_all(None, found, cls.__name__)
        return runbook


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "latency-spike.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(DocumentError) as caught:
        load_document(path, Runbook)
    return caught.value.problems


GOOD = """\
id: latency-spike
title: Latency spike on a vLLM endpoint
script: scripts/shrink.sh
steps:
  - id: look
    kind: check
  - id: shrink
    kind: mutate
    within: 5m
    retries: 2
"""


def test_a_valid_document_comes_back_as_the_model(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    runbook = load_document(path, Runbook)
    assert runbook.title == "Latency spike on a vLLM endpoint"
    assert runbook.script == tmp_path / "scripts" / "shrink.sh"  # relative to the file's folder
    assert runbook.steps == (
        Step(id="look", kind="check"),
        Step(id="shrink", kind="mutate", within_s=300.0, retries=2),
    )


def test_an_unclosed_bracket_is_reported_where_it_opens(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        id: latency-spike
        title: Latency spike
        steps:
          - {id: look, kind: check, retries: [1,
            2,
            3,
            4,
            5,
            # the bracket above is never closed
            6
          - id: shrink
            kind: mutate
        """,
    )
    assert problems(path) == [
        f"{path}:4: (yaml): expected ',' or ']', but got ':' at line 11 "
        "(while parsing a flow sequence started on this line)"
    ]


def test_an_unclosed_quote_is_reported_where_it_opens(tmp_path: Path) -> None:
    path = write(tmp_path, 'id: a\ntitle: "Latency spike\nsteps: []\n')
    (found,) = problems(path)
    assert found.startswith(f"{path}:2: (yaml): found unexpected end of stream at line 4 ")


def test_schema_errors_are_mapped_to_their_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        id: latency-spike
        title: 42
        steps:
          - id: look
            kind: check
          - id: shrink
            kind: mutat
            retries: 9
          - kind: check
            within: soon
        """,
    )
    assert problems(path) == [
        f"{path}:2: title: 42 is not a string (expected a title; quote it)",
        f"{path}:7: steps[1].kind: 'mutat' is not supported (did you mean 'mutate'?)",
        f"{path}:8: steps[1].retries: 9 is out of range (expected an integer from 0 to 5)",
        f"{path}:9: steps[2].id: missing required key (expected a step id)",
        f"{path}:10: steps[2].within: 'soon' is not a duration "
        "(expected a number of seconds or e.g. 500ms, 15s, 2m, 1h)",
    ]


def test_an_unknown_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("    within: 5m", "    witihn: 5m"))
    assert problems(path) == [f"{path}:9: steps[1].witihn: unknown key (did you mean 'within'?)"]
    path = write(tmp_path, GOOD + "owner: sre\n")
    assert problems(path) == [
        f"{path}:11: owner: unknown key (expected one of: id, title, script, steps)"
    ]


def test_a_wrong_shape_says_what_the_model_expects(tmp_path: Path) -> None:
    path = write(tmp_path, "id: a\ntitle: b\nsteps:\n  - look\n")
    assert problems(path) == [
        f"{path}:4: steps[0]: 'look' is not a mapping (expected a step: a mapping with id, kind)"
    ]
    path = write(tmp_path, "- id: a\n")
    assert problems(path) == [
        f"{path}:1: (top): the top level is a list "
        "(expected a runbook: a mapping with id, title, steps)"
    ]


def test_a_cross_field_check_comes_with_the_field_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        id: latency-spike
        title: Latency spike
        steps:
          - {id: look, kind: check}
          - {id: look, kind: chek}
        """,
    )
    assert problems(path) == [
        f"{path}:5: steps[1].kind: 'chek' is not supported (did you mean 'check'?)",
        f"{path}:5: steps[1].id: 'look' repeats (first at line 4)",
    ]


def test_the_yaml_itself_is_checked_before_the_schema(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        id: latency-spike
        title: !!python/object/apply:os.system ["touch /tmp/pwned"]
        steps:
          - &look {id: look, kind: check}
          - <<: *look
            id: again
        id: again
        token: abc
        """,
    )
    assert problems(path) == [
        f"{path}:2: title: the YAML tag !!python/object/apply:os.system is not supported "
        "(expected plain YAML)",
        f"{path}:5: steps[1]: merge keys (<<) are not supported (expected plain keys)",
        f"{path}:5: steps[1].kind: missing required key (expected check or mutate)",
        f"{path}:7: id: duplicate key (first at line 1)",
        f"{path}:8: token: literal secrets are not allowed in the runbook "
        "(name an environment variable that holds it)",
    ]


def test_line_at_is_zero_outside_a_document() -> None:
    class Where(BaseModel):
        seen: list[int] = []

        @model_validator(mode="wrap")
        @classmethod
        def _line(
            cls, data: Any, handler: ModelWrapValidatorHandler[Where], info: ValidationInfo
        ) -> Where:
            return handler({"seen": [line_at(info, ("seen",))]})

    assert Where.model_validate({}).seen == [0]
