"""The key converge's plan: what the proxy holds vs the declarations -> only the differing actions,
never a spend, never a value; the commands and the printed table hold no key value either."""

import datetime as dt
import json

import pytest

from tasks.config.settings import ConfigError
from tasks.key_converge import EXPIRY_SLACK_SECONDS, _in_container, key_checks, plan, table
from tasks.remote import key_agent

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.timezone.utc)
TEAMS = [{"alias": "research", "models": ["upstream"], "max_budget": 100, "budget_duration": "30d",
          "members": ["alice"]}]
KEYS = [
    {"alias": "everything", "models": "all", "max_budget": 50, "budget_duration": "30d"},
    {"alias": "research-ci", "team": "research", "metadata": {"owner": "ci"}},
    {"alias": "limited", "models": ["upstream"], "rpm_limit": 2, "expires": "2027-01-01"},
    {"alias": "old", "state": "absent"},
]


def held_as_declared():
    """What LiteLLM returns after the declarations were applied (plus fields of its own)."""
    return {
        "teams": {"research": {"team_id": "research", "models": ["upstream"], "max_budget": 100.0,
                               "budget_duration": "30d", "tpm_limit": None, "rpm_limit": None, "metadata": {},
                               "blocked": False, "spend": 3.5, "members": ["alice"]}},
        "keys": {
            "everything": {"key_alias": "everything", "models": [], "team_id": None, "max_budget": 50.0,
                           "budget_duration": "30d", "tpm_limit": None, "rpm_limit": None, "metadata": {},
                           "expires": None, "blocked": None, "spend": 1.25, "value_matches": True, "count": 1},
            "research-ci": {"key_alias": "research-ci", "models": [], "team_id": "research", "max_budget": None,
                            "metadata": {"owner": "ci", "tags": []}, "expires": None, "blocked": False,
                            "spend": 0.0, "value_matches": True, "count": 1},
            "limited": {"key_alias": "limited", "models": ["upstream"], "team_id": None, "rpm_limit": 2,
                        "metadata": {}, "expires": "2027-01-01T00:01:00Z", "blocked": False, "spend": 0,
                        "value_matches": True, "count": 1},
            "old": None,
        },
    }


def declared(build, teams=TEAMS, keys=KEYS):
    settings = build(teams=teams, virtual_keys=keys)
    return settings, settings.teams, settings.virtual_keys


def test_a_new_database_gets_everything_made(build):
    _, teams, keys = declared(build)
    actions, problems = plan(teams, keys, {"teams": {"research": None}, "keys": {k.alias: None for k in keys}}, NOW)
    assert problems == []
    assert [(a["do"], a["describe"]) for a in actions] == [
        ("team_new", "team research: created"), ("key_generate", "key everything: created"),
        ("key_generate", "key research-ci: created"), ("key_generate", "key limited: created")]
    team, everything, research, limited = (a["body"] for a in actions)
    assert team == {"team_id": "research", "team_alias": "research", "models": ["upstream"], "max_budget": 100,
                    "budget_duration": "30d", "members_with_roles": [{"role": "user", "user_id": "alice"}]}
    assert everything == {"key_alias": "everything", "models": [], "max_budget": 50, "budget_duration": "30d"}
    assert research == {"key_alias": "research-ci", "models": [], "team_id": "research", "metadata": {"owner": "ci"}}
    assert limited["duration"] == f"{int((dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc) - NOW).total_seconds())}s"
    assert not [a for a in actions if "key" in a["body"] or "spend" in a["body"]]


def test_as_declared_means_nothing_to_do(build):
    _, teams, keys = declared(build)
    assert plan(teams, keys, held_as_declared(), NOW) == ([], [])


def test_only_drifted_declared_fields_are_sent_and_spend_never(build):
    _, teams, keys = declared(build, teams=[dict(TEAMS[0], models=["upstream", "llama-local"], members=["bob"])],
                              keys=[dict(KEYS[0], max_budget=75)] + KEYS[1:])
    held = held_as_declared()
    held["keys"]["research-ci"]["max_budget"] = 9.0  # set in the UI: the declaration does not name it
    actions, problems = plan(teams, keys, held, NOW)
    assert problems == []
    assert [(a["do"], a["body"]) for a in actions] == [
        ("team_update", {"team_id": "research", "models": ["llama-local", "upstream"]}),
        ("member_add", {"team_id": "research", "member": [{"role": "user", "user_id": "bob"}]}),
        ("member_delete", {"team_id": "research", "user_id": "alice"}),
        ("key_update", {"key_alias": "everything", "max_budget": 75}),
    ]


def test_absent_entries_are_deleted_when_held(build):
    _, teams, keys = declared(build, teams=[dict(TEAMS[0], state="absent")], keys=[KEYS[0], KEYS[3]])
    held = held_as_declared()
    held["teams"]["research"]["keys"] = [{"key_alias": "old", "token": "0f0f0f0f"}]  # deleted first anyway
    held["keys"]["old"] = {"key_alias": "old", "models": [], "value_matches": None, "count": 1}
    actions, _ = plan(teams, keys, held, NOW)
    assert [(a["do"], a["body"]) for a in actions] == [("key_delete", {"key_aliases": ["old"]}),
                                                       ("team_delete", {"team_ids": ["research"]})]


def test_a_key_held_with_another_value_is_refused_never_replaced(build):
    _, teams, keys = declared(build)
    held = held_as_declared()
    held["keys"]["everything"].update(value_matches=False, max_budget=1.0)
    actions, problems = plan(teams, keys, held, NOW)
    assert [a for a in actions if a.get("alias") == "everything"] == []
    assert "the database holds a key with this alias whose value is not the secrets file's VIRTUAL_KEY_EVERYTHING" \
        in problems[0]


def test_a_fixed_expiry_within_the_slack_is_no_change(build):
    _, teams, keys = declared(build)
    held = held_as_declared()
    held["keys"]["limited"]["expires"] = (dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
                                          + dt.timedelta(seconds=EXPIRY_SLACK_SECONDS + 60)).isoformat()
    actions, _ = plan(teams, keys, held, NOW)
    assert [a["describe"] for a in actions] == ["key limited: duration updated"]


def test_checks_and_commands_hold_no_key_value(build):
    settings, _, _ = declared(build)
    values = [settings.secrets.get(k.key_env) for k in settings.virtual_keys if settings.secrets.get(k.key_env)]
    assert len(values) == 3
    checks = key_checks(settings, NOW)
    assert {c["name"]: c.get("expect") for c in checks} == {
        "virtual key everything: sees its models": sorted(m.name for m in settings.models),
        "virtual key research-ci: sees its models": ["upstream"],
        "virtual key limited: sees its models": ["upstream"]}
    command = _in_container(settings, "print(1)", "apply", json.dumps({"checks": checks}))
    assert "virtual-keys.json" in command
    text = json.dumps(checks) + command + table(settings, held_as_declared())
    assert not [v for v in values if v in text]


def test_the_table(build):
    settings, _, _ = declared(build)
    lines = table(settings, held_as_declared()).splitlines()
    assert lines[0].split() == ["alias", "team", "models", "budget", "spend", "expires", "state"]
    assert lines[1].split() == ["everything", "-", "all", "50.00", "/", "30d", "1.2500", "never", "active"]
    assert lines[3].split()[-3:] == ["2027-01-01", "00:01", "active"]
    assert lines[4].split() == ["old", "-", "-", "-", "-", "-", "absent"]


def test_the_agent_never_repeats_a_key_in_an_error():
    said = key_agent.describe({"error": {"message": "Key sk-abc123def already exists, token 'sk-zzz'."}})
    assert "sk-abc" not in said and "sk-zzz" not in said and "already exists" in said


def test_an_imported_key_found_by_its_value_is_adopted(build):
    _, teams, keys = declared(build)
    held = held_as_declared()
    held["keys"]["everything"].update(key_alias=None, max_budget=None)  # made by hand with curl, no alias
    actions, problems = plan(teams, keys, held, NOW)
    assert problems == []
    assert [(a["describe"], a["body"]) for a in actions] == [
        ("key everything: adopted (was without alias)", {"key_alias": "everything", "max_budget": 50})]


class _Gateway:
    def __init__(self, name, mode):
        self.name, self.data = name, type("Data", (), {"get": staticmethod(lambda k, d=None: {"database_mode": mode}.get(k, d))})


class _State:
    def __init__(self, gateways, limit):
        self.inventory = type("Inventory", (), {"get_group": staticmethod(lambda group, default=None: gateways)})
        self.is_host_in_limit = lambda gateway: gateway.name in limit


def test_gateways_sharing_an_external_database_converge_it_once(build, secrets_file, monkeypatch):
    from tasks import key_converge

    secrets_file.write_text(secrets_file.read_text() + 'DATABASE_URL="postgresql://u:pw-long-enough@db.internal/litellm"\n')
    gateways = [_Gateway("gw1", "bundled"), _Gateway("gw2", "external"), _Gateway("gw3", "external")]
    external = build(hosts={"gw2": {"database_mode": "external"}, "gw3": {"database_mode": "external"}})
    bundled = build(hosts={"gw1": {}})["gw1"]
    monkeypatch.setattr(key_converge, "state", _State(gateways, {"gw1", "gw2", "gw3"}))
    assert [key_converge.owner(s) for s in (bundled, external["gw2"], external["gw3"])] == ["gw1", "gw2", "gw2"]
    # --limit gw3: the first external gateway of the run is gw3 itself.
    monkeypatch.setattr(key_converge, "state", _State(gateways, {"gw3"}))
    assert key_converge.owner(external["gw3"]) == "gw3"


def test_every_planned_action_is_one_the_agent_knows(build):
    _, teams, keys = declared(build, teams=[dict(TEAMS[0], members=["bob"]), {"alias": "gone", "state": "absent"}])
    held = held_as_declared()
    held["teams"]["gone"] = {"team_id": "gone", "keys": []}
    held["keys"]["old"] = {"key_alias": "old"}
    held["keys"]["everything"]["max_budget"] = 1.0
    held["teams"]["research"]["max_budget"] = 1.0
    fresh, _ = plan(teams, keys, {"teams": {}, "keys": {}}, NOW)
    drifted, _ = plan(teams, keys, held, NOW)
    assert {a["do"] for a in fresh + drifted} == set(key_agent.ACTIONS)


def team_deletion(build, keys, team_keys, **team):
    """plan() for team research declared absent (with `team` fields) while the proxy holds it with `team_keys`."""
    _, teams, declared_keys = declared(build, teams=[dict(TEAMS[0], state="absent", **team), {"alias": "ops"}],
                                       keys=keys)
    held = held_as_declared()
    held["teams"]["research"]["keys"] = team_keys
    held["keys"]["old"] = {"key_alias": "old", "models": [], "value_matches": None, "count": 1}
    return plan(teams, declared_keys, held, NOW)


HAND_MADE = [{"key_alias": "hand-made", "token": "1a2b3c4d"}, {"key_alias": None, "token": "deadbeef"}]


def test_a_team_deletion_that_would_take_keys_not_declared_is_refused(build):
    actions, problems = team_deletion(build, [KEYS[0], KEYS[3]], HAND_MADE + [{"key_alias": "old", "token": "0f0f0f0f"}])
    assert "team_delete" not in [a["do"] for a in actions]
    assert len(problems) == 1
    assert problems[0].startswith("teams['research']: state 'absent' would delete 2 key(s) with the team")
    assert "hand-made" in problems[0] and "deadbeef" in problems[0] and "delete_keys" in problems[0]
    assert "old" not in problems[0].split(": ", 2)[2].split(" — fix")[0]  # declared absent: deleted first anyway


def test_a_declared_key_left_in_the_team_is_taken_too_one_moved_out_is_not(build):
    moved = dict(KEYS[1], team="ops")
    left = {"alias": "stays", "models": "all"}  # its entry names no team: the deletion would take it
    _, problems = team_deletion(build, [moved, left], [{"key_alias": "research-ci", "token": "11111111"},
                                                       {"key_alias": "stays", "token": "22222222"}])
    assert len(problems) == 1 and "stays" in problems[0] and "research-ci" not in problems[0]


def test_delete_keys_lets_the_team_take_its_keys(build):
    actions, problems = team_deletion(build, [KEYS[0]], HAND_MADE, delete_keys=True)
    assert problems == [] and actions[-1] == {"do": "team_delete", "body": {"team_ids": ["research"]},
                                              "describe": "team research: deleted, with its 2 key(s)"}


def test_a_team_deletion_with_no_keys_goes_ahead_and_unknown_keys_refuse(build):
    actions, problems = team_deletion(build, [KEYS[0]], [])
    assert problems == [] and actions[-1]["describe"] == "team research: deleted"
    _, unknown = team_deletion(build, [KEYS[0]], None)
    assert len(unknown) == 1 and "could not be listed" in unknown[0]


def test_the_read_lists_the_keys_of_absent_teams_only(build):
    from tasks.key_converge import read_spec

    settings = build(teams=[dict(TEAMS[0], state="absent"), {"alias": "ops"}], virtual_keys=[KEYS[0]])
    assert read_spec(settings) == {"teams": ["research", "ops"], "keys": ["everything"], "team_keys": ["research"]}


def test_delete_keys_is_a_flag(build):
    with pytest.raises(ConfigError) as refused:
        build(teams=[dict(TEAMS[0], state="absent", delete_keys="yes")])
    assert "teams['research'].delete_keys: 'yes' must be True or False" in str(refused.value)


def test_dry_prints_the_plan_against_what_the_proxy_holds(build):
    from tasks.key_converge import preview_lines

    settings = build(teams=TEAMS, virtual_keys=[dict(KEYS[0], max_budget=75)] + KEYS[1:])
    assert preview_lines("gw1", True, held_as_declared(), settings, NOW) == ["will do: key everything: max_budget updated"]
    assert preview_lines("gw1", True, held_as_declared(), build(teams=TEAMS, virtual_keys=KEYS), NOW) == [
        "virtual keys on gw1: 1 team(s) and 4 key(s) as declared, nothing to do"]
    held = held_as_declared()
    held["keys"]["everything"]["value_matches"] = False
    refused = preview_lines("gw1", True, held, settings, NOW)
    assert refused[0].startswith("virtual keys on gw1: the deploy would refuse, changing nothing:\n  virtual key")
    assert preview_lines("gw1", False, None, settings, NOW) == [
        "virtual keys on gw1: the plan is made when the deploy executes (the litellm container is not running yet)"]


def test_failure_texts_hold_no_key_value_nor_hash(build):
    from tasks.key_converge import key_values, preview_lines, scrubbed

    settings = build(teams=TEAMS, virtual_keys=KEYS)
    value = key_values(settings)["everything"]
    digest = key_agent.digest(value)
    # LiteLLM's refusal of a key quotes its hash and the start of its value.
    said = scrubbed(settings, f"HTTP 401: Received API Key = {value[:10]}...{value[-4:]}, Key Hash (Token) ={digest}")
    assert "HTTP 401" in said and digest not in said and value[:10] not in said and value[-4:] not in said
    error = {"error": f"GET /key/info: HTTP 500: {value} {digest}"}
    shown = "".join(preview_lines("gw1", True, error, settings, NOW))
    assert "cannot read what the proxy holds" in shown and value not in shown and digest not in shown
