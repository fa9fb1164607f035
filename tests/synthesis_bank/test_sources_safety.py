"""Issue 12 case 8: hidden sources are reported, and list-file errors never echo the file's contents."""

from __future__ import annotations

import logging
import shutil

import pytest

from ld_augment.errors import ConfigError
from synthesis_bank.cli import main
from synthesis_bank.recipe import load_recipe
from synthesis_bank.sources import enumerate_sources


def test_dot_prefixed_sources_are_reported(recipe_dict, write_recipe, ct_folder, caplog):
    cts, segs = ct_folder
    shutil.copy(cts / "case_a.nii.gz", cts / ".case_hidden.nii.gz")
    with caplog.at_level(logging.WARNING, logger="synthesis_bank.sources"):
        sources = enumerate_sources(load_recipe(write_recipe(recipe_dict)))
    assert [s.source_id for s in sources] == ["case_a", "case_b", "case_c"]
    assert "skipped 1 hidden file(s)" in caplog.text and ".case_hidden.nii.gz" in caplog.text


def test_list_file_pointing_at_a_private_file_does_not_leak_it(recipe_dict, write_recipe, tmp_path, capsys):
    private = tmp_path / "passwd"
    private.write_text("root:x:0:0:secret-hash-123:/root:/bin/bash\n")
    recipe = write_recipe(dict(recipe_dict, sources={"list_file": str(private)}))
    with pytest.raises(ConfigError) as err:
        enumerate_sources(load_recipe(recipe))
    assert f"{private}:1:" in str(err.value) and "secret" not in str(err.value) and "bin/bash" not in str(err.value)
    assert main(["build", "--recipe", str(recipe), "--out", str(tmp_path / "bank"), "--no-progress"]) == 2
    assert "secret" not in capsys.readouterr().err


def test_binary_list_file_is_one_clear_error(recipe_dict, write_recipe, tmp_path):
    listing = tmp_path / "cases.txt"
    listing.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"not a UTF-8 text list file \(byte \d+\)"):
        enumerate_sources(load_recipe(write_recipe(dict(recipe_dict, sources={"list_file": str(listing)}))))


def test_list_file_with_a_missing_nifti_names_it(recipe_dict, write_recipe, ct_folder, tmp_path):
    listing = tmp_path / "cases.txt"
    listing.write_text(f"{ct_folder[0] / 'case_a.nii.gz'}\nmissing_ct.nii.gz\n")
    with pytest.raises(ConfigError, match=r"cases\.txt:2: file not found: .*missing_ct\.nii\.gz"):
        enumerate_sources(load_recipe(write_recipe(dict(recipe_dict, sources={"list_file": str(listing)}))))
