"""pyinfra's own floor for the no-op benchmark: a 2-operation deploy that changes nothing, run on the
same hosts and inventory as deploy.py, so the ratio of the two is what litellm-deploy adds."""

from pyinfra.operations import files

files.directory(name="Root directory present", path="/root", present=True)
files.directory(name="Temporary directory present", path="/tmp", present=True)
