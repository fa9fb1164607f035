"""One dataset.json reader for every tool that takes a dataset folder: each problem is one line naming the file."""

from __future__ import annotations

import json

import pytest

from ld_augment.errors import InputError
from ld_augment.io.dataset_json import read_dataset_json


def test_reads_a_dataset_json(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    assert read_dataset_json(tmp_path / "dataset.json")["labels"]["liver"] == 1


@pytest.mark.parametrize("text, problem", [
    (None, "not found; expected a bank"),
    ("{not json", "unreadable JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"labels": {}}', "no 'labels' mapping"),
])
def test_each_problem_names_the_file(tmp_path, text, problem):
    path = tmp_path / "dataset.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=problem) as exc:
        read_dataset_json(path, expected="a bank")
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
