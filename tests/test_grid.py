"""Grid reading and row checks: rows named as a person counts them, all bad cells found, fast paths exact."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from promptgrid.errors import InvalidInput
from promptgrid.models.catalog import SEED_MAX, get_model
from promptgrid.models.check import check_input
from promptgrid.spec.checks import FEW_VALUES, check_image_ref, iter_grid, validate_grid
from promptgrid.spec.grid import GridContext
from promptgrid.spec.problems import ProblemLog

LARGE = get_model("stable-diffusion-3-5-large")
TURBO = get_model("stable-diffusion-3-5-large-turbo")


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files inside the working directory are named relative to it


def context(path: Path, *models) -> GridContext:
    return GridContext(path, tuple(models) or (LARGE,), path.parent)


def problems(path: Path, *models) -> ProblemLog:
    log = ProblemLog()
    validate_grid(context(path, *models), log)
    return log


def write_csv(tmp_path: Path, text: str, name: str = "grid.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def write_parquet(tmp_path: Path, table: pa.Table, name: str = "grid.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def test_csv_rows_are_named_by_the_line_they_start_on(tmp_path: Path) -> None:
    text = 'prompt,cfg,id\n"a fox\nin snow",3,a\n\nan owl,99,b\n"a ""quoted""\n\nbird",abc,c\n'
    log = problems(write_csv(tmp_path, text))
    assert log.problems == [
        "grid.csv line 5, column cfg: '99' is not allowed; expected a number from 0 to 20",
        "grid.csv line 6, column cfg: 'abc' is not allowed; expected a number from 0 to 20",
    ]


def test_parquet_rows_are_named_from_one(tmp_path: Path) -> None:
    table = pa.table({"prompt": ["a", "b", "c"], "steps": [20, 60, 30]})
    log = problems(write_parquet(tmp_path, table))
    expected = (
        "column steps: 60 is not allowed; expected an integer from 1 to 50 (model stable-diffusion-3-5-large)"
    )
    assert log.problems == [f"grid.parquet row 2, {expected}"]


def test_turbo_rows_are_held_to_its_narrower_steps_range(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "prompt,steps\na,4\nb,20\n")
    assert problems(path, LARGE).total == 0
    log = problems(path, LARGE, TURBO)
    assert (
        log.total == 1
        and "line 3" in log.problems[0]
        and "stable-diffusion-3-5-large-turbo" in log.problems[0]
    )


def test_all_row_problems_are_counted_and_the_first_twenty_kept(tmp_path: Path) -> None:
    rows = "".join(f"p{i},{'' if i % 2 else 'png'},{'bad' if i % 3 == 0 else 3}\n" for i in range(60))
    log = problems(write_csv(tmp_path, "prompt,output_format,cfg\n" + rows))
    assert log.total == 20 and len(log.problems) == 20
    rows = "".join(f",{i}\n" for i in range(45))
    with pytest.raises(InvalidInput) as caught:
        log = problems(write_csv(tmp_path, "prompt,id\n" + rows))
        log.raise_if_any()
    assert caught.value.total == 45 and "... and 25 more problems" in caught.value.describe()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prompt,cfg\n  ,3\n", "line 2, column prompt: '  ' is not allowed; expected a non-empty string"),
        ("prompt,cfg\na,NaN\n", "line 2, column cfg: 'NaN' is not allowed"),
        ("prompt,aspect_ratio\na,1:2\n", "column aspect_ratio: '1:2' is not allowed; expected one of 1:1"),
        ("prompt,output_format\na,gif\n", "column output_format: 'gif' is not allowed"),
        ("prompt,steps\na,20.5\n", "column steps: '20.5' is not allowed; expected an integer"),
        ("prompt,seed\na,-1\n", "column seed: '-1' is not allowed; expected an integer from 0 to"),
        ("prompt,prompt_strength\na,1.5\n", "column prompt_strength: '1.5' is not allowed"),
        ("prompt,output_quality\na,true\n", "column output_quality: 'true' is not allowed"),
        ("prompt,cfg\na,1,2\n", "line 2: 3 fields, but the header has 2"),
        ("prompt,prompt\na,b\n", "column 'prompt' appears more than once"),
        ("id,text\n1,a\n", "no 'prompt' column (found 'id', 'text')"),
        ("Prompt ,id\n1,a\n", "names are exact: lower case, no spaces"),
        ("prompt,,id\na,b,c\n", "column 2 has no name"),
        ("prompt,id\n", "has a header but no data rows"),
        ('prompt\na\n"left open\nmore\n', "line 3: cannot read the record starting there"),
        ('prompt,id\n"a"b,1\n', "line 2: cannot read the record"),
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
    ],
)
def test_a_malformed_csv_grid_is_named_precisely(tmp_path: Path, text: str, expected: str) -> None:
    log = problems(write_csv(tmp_path, text))
    assert any(expected in problem for problem in log.problems), log.problems


def test_a_non_utf8_csv_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "grid.csv"
    path.write_bytes("prompt\nok\ncaf\xe9 au lait\n".encode("latin-1"))
    log = problems(path)
    assert log.problems == ["grid.csv line 3: byte 0xe9 at position 4 is not UTF-8; save the file as UTF-8"]


def test_a_byte_order_mark_does_not_hide_the_prompt_column(tmp_path: Path) -> None:
    path = tmp_path / "grid.csv"
    path.write_bytes(b"\xef\xbb\xbfprompt,id\na fox,1\n")
    batches = list(iter_grid(context(path)))
    assert batches[0].inputs["prompt"] == ["a fox"] and batches[0].carried == {"id": ["1"]}


def test_a_tsv_grid_splits_on_tabs(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "prompt\tcfg\na, b\t4\n", "grid.tsv")
    assert next(iter(iter_grid(context(path)))).inputs == {"prompt": ["a, b"], "cfg": [4.0]}


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (pa.table({"prompt": [1, 2]}), "column prompt: has type int64; expected text"),
        (pa.table({"prompt": ["a"], "cfg": [[1.0]]}), "column cfg: has type list<element: double>; expected"),
        (pa.table({"prompt": ["a"], "steps": [True]}), "column steps: has type bool; expected numbers"),
        (pa.table({"prompt": ["a", None]}), "row 2, column prompt: None is not allowed"),
        (
            pa.table({"prompt": ["a", "b"], "cfg": [1.0, float("nan")]}),
            "row 2, column cfg: nan is not allowed",
        ),
        (pa.table({"prompt": pa.array([], pa.string())}), "the grid has no data rows"),
        (pa.table([pa.array(["a"]), pa.array(["b"])], names=["prompt", "prompt"]), "appears more than once"),
    ],
)
def test_a_malformed_parquet_grid_is_named_precisely(tmp_path: Path, table: pa.Table, expected: str) -> None:
    log = problems(write_parquet(tmp_path, table))
    assert any(expected in problem for problem in log.problems), log.problems


def test_a_corrupt_parquet_file_is_reported_not_raised(tmp_path: Path) -> None:
    path = write_parquet(tmp_path, pa.table({"prompt": ["a"] * 100}))
    path.write_bytes(path.read_bytes()[:-30])
    log = problems(path)
    assert log.total == 1 and "not a readable Parquet file" in log.problems[0]


def test_unknown_grid_formats_and_missing_files_are_reported(tmp_path: Path) -> None:
    assert "unknown grid format '.xlsx'" in problems(write_csv(tmp_path, "x", "grid.xlsx")).problems[0]
    assert "does not exist" in problems(tmp_path / "absent.csv").problems[0]


def test_image_references_allow_https_s3_loopback_http_and_existing_local_images(tmp_path: Path) -> None:
    (tmp_path / "cat.PNG").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("x")
    good = [
        "https://cdn.example.com/a.png",
        "s3://bucket/in/a.webp",
        "http://127.0.0.1:8080/a.jpg",
        "cat.PNG",
    ]
    bad = [
        "http://example.com/a.png",
        "s3://bucket",
        "s3:///key.png",
        "ftp://host/a.png",
        "file:///etc/passwd",
        "dog.png",
        "notes.txt",
        "",
        42,
        "http://[::1/a.png",
        "x" * 5000 + ".png",
        "nul\x00.png",
    ]
    assert [check_image_ref(ref, tmp_path) for ref in good] == [None] * len(good)
    assert all(check_image_ref(ref, tmp_path) for ref in bad)


def test_a_bad_image_cell_is_a_row_problem(tmp_path: Path) -> None:
    log = problems(write_csv(tmp_path, "prompt,image\na,https://x.example/a.png\nb,ftp://x/b.png\n"))
    assert log.total == 1 and log.problems[0].startswith("grid.csv line 3, column image: 'ftp://x/b.png'")


def test_empty_cells_fall_back_and_numbers_are_normalised(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "prompt,cfg,steps,split\na,3.50,30.0,train\nb,,,test\n")
    batch = next(iter(iter_grid(context(path))))
    assert batch.inputs == {"prompt": ["a", "b"], "cfg": [3.5, None], "steps": [30, None]}
    assert batch.carried == {"split": ["train", "test"]}
    assert [batch.label(row) for row in range(2)] == ["line 2", "line 3"]


def test_iter_grid_without_a_log_raises_on_the_first_bad_batch(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "prompt,cfg\na,1\nb,100\n")
    with pytest.raises(InvalidInput, match="line 3, column cfg"):
        list(iter_grid(context(path)))


@pytest.mark.parametrize("kind", ["parquet", "csv"])
@pytest.mark.parametrize("name", ["cfg", "steps", "seed", "prompt_strength", "output_quality"])
def test_the_many_values_fast_path_agrees_with_check_input(tmp_path: Path, name: str, kind: str) -> None:
    rng = random.Random(name)
    edges = [0, -0.0, 1, 10, 20, 50, 100, 0.5, 20.000001, -1, SEED_MAX, SEED_MAX + 1, float("nan"), 7.5]
    values = (
        edges
        + [rng.uniform(-5, 120) for _ in range(FEW_VALUES)]
        + [float(rng.randint(-5, 120)) for _ in range(300)]
    )
    assert len(set(map(repr, values))) > FEW_VALUES  # so the vectorised path, not value by value, is tested
    if kind == "csv":
        lines = "".join(f"p,{value!r}\n" for value in values)
        path = write_csv(tmp_path, f"prompt,{name}\n{lines}")
        values = [repr(value) for value in values]
    else:
        path = write_parquet(tmp_path, pa.table({"prompt": ["p"] * len(values), name: values}))
    log = ProblemLog(cap=len(values))
    batches = list(iter_grid(context(path, LARGE, TURBO), carried=False, log=log))
    offset = 2 if kind == "csv" else 1
    flagged = {int(problem.split(" ")[2].rstrip(",")) - offset for problem in log.problems}
    for row, value in enumerate(values):
        expected = [check_input(model, {"prompt": "p", name: value}) for model in (LARGE, TURBO)]
        bad = any(errors for _, errors in expected)
        assert (row in flagged) == bad, (name, value)
        if not bad:
            assert batches[0].inputs[name][row] == expected[0][0][name]
            assert type(batches[0].inputs[name][row]) is type(expected[0][0][name])


def test_dictionary_and_decimal_columns_are_read_as_their_values(tmp_path: Path) -> None:
    import decimal

    table = pa.table(
        {
            "prompt": pa.array(["a", "b"]).dictionary_encode(),
            "cfg": pa.array([decimal.Decimal("3.50"), decimal.Decimal("25")], pa.decimal128(5, 2)),
        }
    )
    path = write_parquet(tmp_path, table)
    log = ProblemLog()
    batches = list(iter_grid(context(path), log=log))
    assert batches[0].inputs == {"prompt": ["a", "b"], "cfg": [3.5, None]}
    assert log.problems == [
        "grid.parquet row 2, column cfg: 25.0 is not allowed; expected a number from 0 to 20"
    ]
