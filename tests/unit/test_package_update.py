"""A user's edited group_data/all.py survives a package update: the update changes a default where the
package declares it (tasks/config/fields.py), never the user's file, so `git pull` merges without a
conflict and the user's choices and the new default both take effect."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = "ghcr.io/berriai/litellm-database:main-v1.108.7"
NEWER_PIN = "ghcr.io/berriai/litellm-database:main-v1.108.8"
USER_CHOICES = 'tls = "self-signed"\nbackup_keep = 14\n'


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@localhost", *args],
                          capture_output=True, text=True, check=False)


def test_a_users_edited_group_data_survives_a_package_update(tmp_path):
    repo = tmp_path / "litellm-deploy"
    for part in ("tasks", "group_data"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    assert PIN in (repo / "tasks/config/fields.py").read_text()
    assert git(tmp_path, "init", "-q", "-b", "main", str(repo)).returncode == 0
    git(repo, "add", "-A")
    assert git(repo, "commit", "-qm", "the package as released").returncode == 0

    git(repo, "checkout", "-qb", "mine")  # the user's clone: their choices in group_data/all.py
    user_file = repo / "group_data/all.py"
    user_file.write_text(user_file.read_text() + USER_CHOICES)
    assert git(repo, "commit", "-qam", "my settings").returncode == 0

    git(repo, "checkout", "-q", "main")  # the next release pins a newer image
    fields = repo / "tasks/config/fields.py"
    fields.write_text(fields.read_text().replace(PIN, NEWER_PIN))
    assert git(repo, "commit", "-qam", "newer LiteLLM").returncode == 0
    assert git(repo, "diff", "--name-only", "HEAD~1").stdout.split() == ["tasks/config/fields.py"]

    git(repo, "checkout", "-q", "mine")
    merged = git(repo, "merge", "--no-edit", "main")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert user_file.read_text().endswith(USER_CHOICES)

    effective = subprocess.run(
        [sys.executable, "-c",
         "import runpy; from tasks.config.settings import DEFAULTS; "
         "mine = {k: v for k, v in runpy.run_path('group_data/all.py').items() if not k.startswith('_')}; "
         "print({**DEFAULTS, **mine}['litellm_image'], mine)"],
        cwd=repo, capture_output=True, text=True, check=True)
    assert effective.stdout.strip() == f"{NEWER_PIN} {{'tls': 'self-signed', 'backup_keep': 14}}"
