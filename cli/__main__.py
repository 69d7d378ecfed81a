"""`python -m arimg`: the same command line as `arimg` (torchrun uses it: `torchrun ... -m arimg pretrain`)."""

from arimg.main import entry

entry()
