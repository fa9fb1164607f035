"""Environment settings of the trainer: ratio precedence and errors that say what to do."""

from __future__ import annotations

import pytest

from ld_augment.errors import ConfigError
from nnunet_trainers.config import ENV_BANK_DIR, ENV_BANK_RATIO, read_bank_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(ENV_BANK_DIR, raising=False)
    monkeypatch.delenv(ENV_BANK_RATIO, raising=False)


def test_missing_bank_names_variable_and_fix():
    with pytest.raises(ConfigError) as err:
        read_bank_settings(configuration="3d_fullres", target="Dataset501_Tiny")
    msg = str(err.value)
    assert ENV_BANK_DIR in msg and "synthesis-bank prepare" in msg and "Dataset501_Tiny" in msg


def test_bank_folder_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_BANK_DIR, str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no such folder"):
        read_bank_settings()


def test_ratio_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_BANK_DIR, str(tmp_path))
    assert read_bank_settings().ratio == 0.5
    monkeypatch.setenv(ENV_BANK_RATIO, "0.3")
    s = read_bank_settings()
    assert (s.ratio, s.ratio_source, s.bank_dir) == (0.3, ENV_BANK_RATIO, tmp_path.resolve())
    s = read_bank_settings(0.75)
    assert (s.ratio, s.ratio_source) == (0.75, "variant")


@pytest.mark.parametrize("value", ["abc", "1.5", "-0.1"])
def test_bad_ratio(monkeypatch, tmp_path, value):
    monkeypatch.setenv(ENV_BANK_DIR, str(tmp_path))
    monkeypatch.setenv(ENV_BANK_RATIO, value)
    with pytest.raises(ConfigError, match=ENV_BANK_RATIO):
        read_bank_settings()


def test_ratio_zero_needs_no_bank(monkeypatch):
    monkeypatch.setenv(ENV_BANK_RATIO, "0")
    s = read_bank_settings()
    assert s.bank_dir is None and s.ratio == 0.0
