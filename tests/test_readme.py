"""The README stays true to the code: every flag is in its reference, every named path exists."""

import re

from launch import REPO

from megatron_ext.arguments import build_parser


def test_readme_lists_every_flag():
    readme = (REPO / "README.md").read_text()
    flags = [a.option_strings[0] for a in build_parser()._actions if a.option_strings and a.dest != "help"]
    missing = [flag for flag in flags if f"`{flag}`" not in readme]
    assert not missing, f"README flags reference lacks {missing}"


def test_readme_paths_exist():
    readme = (REPO / "README.md").read_text()
    for path in re.findall(r"`((?:megatron_ext|mup|tools|examples|benchmarks|tests|docs|data)/[\w./-]*)`", readme):
        assert (REPO / path.rstrip("/")).exists(), path
