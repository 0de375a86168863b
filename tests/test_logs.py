"""Logs that read well (issue 28): values formatted rather than Python reprs, a sweep's data table once and one
closing line naming its best job."""

from __future__ import annotations

import logging
from pathlib import Path

from imgclf.serve.uploads import Limits
from imgclf.sweeps.summary import closing_line
from imgclf.tasks import inputs

ROWS = [
    {"job": "0", "overrides": "epochs=1 optimizer.lr=0.001", "status": "COMPLETED", "best": "0.5", "dir": "d/0"},
    {"job": "1", "overrides": "epochs=1 optimizer.lr=abc", "status": "FAILED", "best": "", "dir": "d/1"},
    {"job": "2", "overrides": "epochs=1 optimizer.lr=0.01", "status": "COMPLETED", "best": "0.6666667", "dir": "d/2"},
]


def test_a_grid_sweep_ends_with_its_best_job_and_what_made_it_differ() -> None:
    line = closing_line(ROWS, "val/acc", "max", Path("d/summary.csv"))
    assert line == (
        "sweep done: 3 jobs (2 COMPLETED, 1 FAILED); best val/acc 0.6667 by job 2 (optimizer.lr=0.01) "
        "in d/2; every job: d/summary.csv"
    )
    assert "by job 0 (optimizer.lr=0.001)" in closing_line(ROWS, "val/loss", "min", Path("s.csv"))
    failed = [{**row, "status": "FAILED", "best": ""} for row in ROWS]
    assert closing_line(failed, "val/acc", "max", Path("s.csv")) == (
        "sweep done: 3 jobs (3 FAILED); no job reached a val/acc; s.csv"
    )


def test_the_data_table_is_logged_once_for_jobs_over_the_same_data(caplog) -> None:
    inputs._last_data_table.clear()
    with caplog.at_level(logging.INFO, logger="imgclf.tasks.inputs"):
        inputs.log_data_table("class  train\ncat  10", "job0/doctor.json")
        inputs.log_data_table("class  train\ncat  10", "job1/doctor.json")
        inputs.log_data_table("class  train\ncat  12", "job2/doctor.json")
    assert [r.getMessage() for r in caplog.records] == [
        "data:\nclass  train\ncat  10",
        "data: as in the previous job (job1/doctor.json)",
        "data:\nclass  train\ncat  12",
    ]


def test_limits_read_as_words_in_the_log() -> None:
    assert str(Limits()) == "10 MB a file, 32 MB a request, 16 files"
    assert "Limits(" not in f"{Limits(max_file_bytes=1024 * 1024 // 2)}"
