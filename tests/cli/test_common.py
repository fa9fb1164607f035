"""The command boundary (one line, exit 2, traceback only with -v) and trusted-only allow_pickle for
`ld-augment synthesize --engine-options`."""

from __future__ import annotations

import errno
import logging

import pytest

from ld_augment.cli.common import describe_os_error, engine_options_arg, run_command
from ld_augment.cli.main import main
from ld_augment.errors import ConfigError


def _disk_full() -> int:
    raise OSError(errno.ENOSPC, "No space left on device", "/data/bank/imagesTr/x_0000.nii.gz")


def test_os_error_is_one_line_with_the_path(capsys):
    assert run_command(_disk_full, "prog") == 2
    err = capsys.readouterr().err
    assert err == "prog: error: /data/bank/imagesTr/x_0000.nii.gz: No space left on device\n"


def test_error_without_a_message_is_still_one_line(capsys):
    """An error raised with no text names its kind (it raised NameError: ``exc`` is unbound after ``except``)."""
    def silent() -> int:
        raise ConfigError("")

    assert run_command(silent, "prog") == 2
    assert capsys.readouterr().err == "prog: error: ConfigError\n"


def test_verbose_logs_the_traceback(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="ld_augment.cli"):
        assert run_command(_disk_full, "prog", verbose=True) == 2
    assert "Traceback" in caplog.text and "_disk_full" in caplog.text
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_rename_errors_name_both_paths():
    exc = OSError(errno.EXDEV, "Invalid cross-device link", "/a/tmp", None, "/b/final")
    assert describe_os_error(exc) == "/a/tmp -> /b/final: Invalid cross-device link"


def test_unexpected_errors_still_raise():
    def bug() -> int:
        raise ZeroDivisionError("a bug, not a user error")

    with pytest.raises(ZeroDivisionError):  # programming errors keep their traceback
        run_command(bug, "prog")


def test_engine_options_cannot_enable_pickle(tmp_path):
    options_file = tmp_path / "opts.json"
    options_file.write_text('{"mask": {"allow_pickle": true, "checkpoint": "m.pt"}}')
    with pytest.raises(ConfigError, match=r"'mask\.allow_pickle' is not accepted .*--allow-pickle"):
        engine_options_arg(str(options_file), allow_pickle=False, engines={"mask": "diffusion", "texture": "diffusion"})
    opts = engine_options_arg('{"mask": {"checkpoint": "m.pt"}}', allow_pickle=True,
                              engines={"mask": "diffusion", "texture": "procedural"})
    assert opts == {"mask": {"checkpoint": "m.pt", "allow_pickle": True}}


def test_synthesize_refuses_pickle_in_options_with_one_line(tmp_path, capsys):
    code = main(["synthesize", str(tmp_path), "--out", str(tmp_path / "out"), "--engine", "diffusion",
                 "--engine-options", '{"texture": {"allow_pickle": true}}'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "allow_pickle" in err


def test_num_lesions_is_bounded_at_parse_time(capsys):
    with pytest.raises(SystemExit) as err:
        main(["preprocess", "--image", "ct.nii.gz", "--organ", "liver", "--lesion-type", "cyst",
              "--num-lesions", "100000", "--out", "x"])
    assert err.value.code == 2 and "must be 1..50" in capsys.readouterr().err
