"""Teams and virtual keys as code, on the bed's DB-backed gateway (issue 16), own hosts vk-*.

In order: keys made by hand before (one the declarations then mark absent, one they never name);
the declarations converged by deploy.py (each key read back from /key/info equals its declaration,
an rpm limit answered with 429, the hand-made key untouched, the absent one refused), a second run
with no change; a changed budget and team models change only those two, spend kept; keys.py's table
and -vvv and --dry output without any key value (--dry printing the plan, applying nothing), the
stored values 0600; a declared team's deletion refused while it holds a key made by hand (the key
kept); bad declarations refused with nothing changed. That declared keys survive a master-key rotation, and a backup, a fresh host and a
restore, is shown in the suites of those runbooks (test_rotation.py, test_backup.py).
"""

from __future__ import annotations

import re

import pytest

from tasks.config import secrets as S
from tasks.config.virtual_keys import default_key_env
from tests.e2e import gateway_http as api
from tests.e2e.conftest import UPSTREAM_MODEL, make_deployment

pytestmark = pytest.mark.e2e
HOST = "gw-db"
MODELS = ["chat-a", "chat-b"]
TEAMS = [
    {"alias": "research", "models": ["chat-a"], "max_budget": 100, "budget_duration": "30d", "members": ["alice"]},
    {"alias": "ops", "models": "all", "rpm_limit": 100},
]
KEYS = [
    # The setup guide's own case: every model, a 30-day budget.
    {"alias": "everything", "models": "all", "max_budget": 50, "budget_duration": "30d"},
    {"alias": "research-ci", "team": "research", "max_budget": 5, "metadata": {"owner": "ci"}},
    {"alias": "limited", "models": ["chat-b"], "rpm_limit": 2, "tpm_limit": 100000},
    {"alias": "paused", "models": ["chat-a"], "blocked": True},
    {"alias": "legacy", "state": "absent"},
]


@pytest.fixture(scope="module")
def deployment(bed, tmp_path_factory):
    deployment = make_deployment(bed, tmp_path_factory, prefix="vk-", hosts=("gw-db", "up1"), provisioned=("gw-db",))
    upstream = bed.host(deployment.name("up1"))
    deployment.overrides[HOST] = {
        "start_timeout": 600,
        "models": [{"name": name, "model": f"openai/{UPSTREAM_MODEL}", "api_base": upstream["api_base"],
                    "api_key_env": "UPSTREAM_LITELLM_API_KEY"} for name in MODELS],
    }
    yield deployment
    deployment.down()


@pytest.fixture(scope="module")
def gateway(deployment):
    return deployment.base_url(HOST)


@pytest.fixture(scope="module")
def made(deployment, gateway):
    """The gateway deployed without declarations, then two keys made by hand, as before this package."""
    run = deployment.pyinfra(limit=HOST)
    assert run.returncode == 0, run.output[-6000:]
    master = deployment.master_key()
    return {
        "legacy": api.generate_key(gateway, master, key_alias="legacy", models=["chat-a"]),
        "hand-made": api.generate_key(gateway, master, key_alias="hand-made", models=["chat-b"]),
    }


def declare(deployment, teams=TEAMS, keys=KEYS):
    deployment.overrides[HOST].update(teams=teams, virtual_keys=keys)


def value(deployment, alias: str) -> str:
    return S.read_secrets(deployment.secrets)[default_key_env(alias)]


def key_info(gateway, master: str, key: str) -> dict:
    status, body = api.request(gateway, "GET", f"/key/info?key={key}", key=master)
    assert status == 200, body
    return body["info"]


def declared_values(deployment) -> list[str]:
    return [v for n, v in S.read_secrets(deployment.secrets).items() if n.startswith("VIRTUAL_KEY_")]


def test_1_declarations_converge(deployment, gateway, made):
    declare(deployment)
    # At pyinfra's highest verbosity: the keys are made, and no value may show.
    run = deployment.pyinfra("deploy.py", "-vvv", limit=HOST)
    assert run.returncode == 0, run.output[-6000:]
    master = deployment.master_key()
    for alias in ("everything", "research-ci", "limited", "paused"):
        assert f"key {alias}: created" in run.output
    everything = key_info(gateway, master, value(deployment, "everything"))
    assert (everything["key_alias"], everything["models"], everything["max_budget"], everything["budget_duration"]) \
        == ("everything", [], 50, "30d")
    research = key_info(gateway, master, value(deployment, "research-ci"))
    assert (research["team_id"], research["max_budget"], research["metadata"].get("owner")) == ("research", 5, "ci")
    limited = key_info(gateway, master, value(deployment, "limited"))
    assert (limited["models"], limited["rpm_limit"], limited["tpm_limit"]) == (["chat-b"], 2, 100000)
    status, team = api.request(gateway, "GET", "/team/info?team_id=research", key=master)
    assert status == 200, team
    info = team["team_info"]
    assert (info["models"], info["max_budget"], info["budget_duration"]) == (["chat-a"], 100, "30d")
    assert [m["user_id"] for m in info["members_with_roles"] if m["role"] == "user"] == ["alice"]
    # What each key may use, as a client sees it.
    assert api.models_seen(gateway, value(deployment, "everything")) == (200, MODELS)
    assert api.models_seen(gateway, value(deployment, "research-ci")) == (200, ["chat-a"])
    assert api.models_seen(gateway, value(deployment, "limited")) == (200, ["chat-b"])
    assert key_info(gateway, master, value(deployment, "paused"))["blocked"] is True
    assert api.models_seen(gateway, value(deployment, "paused"))[0] in api.REFUSED
    # The absent key is gone; the key the declarations never name is untouched.
    assert api.models_seen(gateway, made["legacy"])[0] in api.REFUSED
    assert api.models_seen(gateway, made["hand-made"]) == (200, ["chat-b"])
    # Checked by the run itself, and listed without a value.
    changed = [op.rsplit(" | ", 1)[-1] for op in deployment.changed(run, HOST)]
    assert changed[-2:] == ["Write virtual-keys.json (virtual key values, mode 0600)",
                            "Teams and virtual keys as declared"], changed
    listed = run.output[run.output.index(f"virtual keys on {deployment.name(HOST)}"):]
    assert re.search(r"limited\s+-\s+chat-b\s+-\s+0\.0000\s+never\s+active", listed), listed[:2000]
    assert not [v for v in declared_values(deployment) if v in run.output]


def test_1_rpm_limit_is_enforced(deployment, gateway):
    key = value(deployment, "limited")
    statuses = [api.chat(gateway, key, "chat-b")[0] for _ in range(4)]
    assert statuses[:2] == [200, 200] and 429 in statuses[2:], statuses


def test_1_second_run_changes_nothing(deployment):
    again = deployment.pyinfra(limit=HOST)
    assert again.returncode == 0, again.output[-6000:]
    assert deployment.changed(again, HOST) == []


def test_2_changed_budget_and_team_models_change_only_those(deployment, gateway):
    master = deployment.master_key()
    key = value(deployment, "everything")
    # Spend the key has run up (the bed's upstream model is free, so it is set as the UI would).
    status, body = api.request(gateway, "POST", "/key/update", key=master, body={"key": key, "spend": 1.5})
    assert status == 200, body
    keys = [dict(k, max_budget=75) if k["alias"] == "everything" else k for k in KEYS]
    teams = [dict(t, models=["chat-a", "chat-b"]) if t["alias"] == "research" else t for t in TEAMS]
    declare(deployment, teams, keys)
    run = deployment.pyinfra(limit=HOST)
    assert run.returncode == 0, run.output[-6000:]
    done = re.findall(r"will do: (.*)", run.output)
    assert sorted(done) == ["key everything: max_budget updated", "team research: models updated"], done
    info = key_info(gateway, master, key)
    assert (info["max_budget"], info["spend"]) == (75, 1.5)
    assert api.models_seen(gateway, value(deployment, "research-ci")) == (200, MODELS)


def test_3_values_never_shown_and_stored_0600(deployment, gateway):
    values = declared_values(deployment)
    assert len(values) == 4
    keys = deployment.pyinfra("keys.py", "-vvv", limit=HOST)
    assert keys.returncode == 0, keys.output[-6000:]
    table = keys.output[keys.output.index("virtual keys on"):]
    for alias in ("everything", "research-ci", "limited", "paused", "legacy"):
        assert alias in table
    assert re.search(r"paused\s+-\s+chat-a\s+-\s+0\.0000\s+never\s+blocked", table), table[:2000]
    assert re.search(r"everything\s+-\s+all\s+75\.00 / 30d", table), table[:2000]
    # A new key, planned under --dry: nothing is generated or written.
    before = deployment.secrets.read_text()
    declared_now = {name: deployment.overrides[HOST][name] for name in ("teams", "virtual_keys")}
    declare(deployment, declared_now["teams"], declared_now["virtual_keys"] + [{"alias": "dry-new", "models": ["chat-a"]}])
    dry = deployment.pyinfra("deploy.py", "--dry", "-vvv", limit=HOST)
    assert dry.returncode == 0, dry.output[-6000:]
    assert "will do: key dry-new: created" in dry.output, dry.output[-6000:]
    assert deployment.secrets.read_text() == before
    status, listed = api.request(gateway, "GET", "/key/list?key_alias=dry-new", key=deployment.master_key())
    assert (status, listed["keys"]) == (200, []), listed
    for output in (keys.output, dry.output):
        assert not [v for v in values + [deployment.master_key()] if v in output]
    assert deployment.secrets.stat().st_mode & 0o777 == 0o600
    assert deployment.ssh(HOST, "stat -c '%a %U' /opt/litellm/virtual-keys.json").strip() == "600 root"
    declare(deployment, *declared_now.values())


def test_4_a_team_deletion_that_would_take_a_hand_made_key_is_refused(deployment, gateway):
    """LiteLLM's /team/delete deletes every key of the team, also one made by hand: the run refuses."""
    master = deployment.master_key()
    by_hand = api.generate_key(gateway, master, key_alias="ops-by-hand", team_id="ops")
    declared_now = {name: deployment.overrides[HOST][name] for name in ("teams", "virtual_keys")}
    declare(deployment, [dict(t, state="absent") if t["alias"] == "ops" else t for t in TEAMS],
            declared_now["virtual_keys"])
    run = deployment.pyinfra("keys.py", limit=HOST)
    declare(deployment, *declared_now.values())
    assert run.returncode != 0
    assert "teams['ops']: state 'absent' would delete 1 key(s) with the team" in run.output, run.output[-6000:]
    assert "ops-by-hand" in run.output and by_hand not in run.output
    assert api.models_seen(gateway, by_hand)[0] == 200
    assert api.request(gateway, "GET", "/team/info?team_id=ops", key=master)[0] == 200


def test_5_bad_declarations_are_refused_and_nothing_changes(deployment):
    before = deployment.ssh(HOST, "sha256sum /opt/litellm/virtual-keys.json /opt/litellm/.env")
    bad_keys = [
        {"alias": "a", "modles": ["chat-a"]},                      # unknown field
        {"alias": "b", "budget_duration": "30x"},                  # bad duration
        {"alias": "c", "max_budget": -1},                          # negative budget
        {"alias": "d", "team": "nobody"},                          # undeclared team
        {"alias": "e", "models": ["gpt-5"]},                       # a model the gateway does not route
        {"alias": "f", "rpm_limit": "60"},                         # a number as text
        {"alias": "g g"},                                          # an alias with a space
        {"alias": "h", "duration": "30d", "expires": "2030-01-01"},  # two expiries
        {"alias": "i", "state": "gone"},                           # unknown state
        {"alias": "j", "team": "research", "models": ["chat-b"]},  # outside the team's models
    ]
    bad_teams = TEAMS + [{"alias": "t", "members": "alice"}]      # members not a list
    declared_now = {name: deployment.overrides[HOST][name] for name in ("teams", "virtual_keys")}
    declare(deployment, bad_teams, KEYS + bad_keys)
    run = deployment.pyinfra(limit=HOST)
    declare(deployment, *declared_now.values())
    assert run.returncode != 0
    for expected in ("virtual_keys['a']: unknown field(s) modles", "virtual_keys['b'].budget_duration: '30x'",
                     "virtual_keys['c'].max_budget: -1", "virtual_keys['d'].team: 'nobody'",
                     "virtual_keys['e'].models: 'gpt-5' not routed", "virtual_keys['f'].rpm_limit: '60' is text",
                     f"virtual_keys[{len(KEYS) + 6}].alias: 'g g'", "virtual_keys['h']: both duration and expires",
                     "virtual_keys['i'].state: 'gone'", "virtual_keys['j'].models: chat-b not among team",
                     "teams['t'].members"):
        assert expected in run.output, expected
    assert "nothing was changed on any host" in run.output
    assert deployment.ssh(HOST, "sha256sum /opt/litellm/virtual-keys.json /opt/litellm/.env") == before
