"""`python -m wonderq_cli` is the `wonderq` command."""

from .main import console_script

console_script()
