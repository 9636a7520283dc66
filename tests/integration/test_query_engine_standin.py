"""The test bed's query-engine stand-in, on its own: Prisma Client Python (the real client LiteLLM uses,
generated for LiteLLM's real schema) against a real PostgreSQL holding the real LiteLLM schema, through
the stand-in and Prisma's wasm query engine. Every check reads the value back.

The stand-in exists only because Prisma's native engine cannot be downloaded offline
(tests/testbed/images/litellm/query-engine/query-engine.mjs says why); these checks are what make it
trustworthy enough to stand under the DB-backed proxy in the e2e tier.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.conftest import create_database, drop_database
from tests.integration.query_engine import STANDIN_SOURCE, engine_environment, generate_client, install_standin

ENGINE_COMMIT = "393aa359c9ad4a4bb28630fb5613f9c281cde053"  # the engine Prisma Client Python 0.15.0 expects

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def standin():
    path = install_standin()
    generate_client(path)
    saved = {k: os.environ.get(k) for k in engine_environment(path)}
    os.environ.update(engine_environment(path))
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def db(pg_server, litellm_schema):
    database = create_database(pg_server, template=litellm_schema[0].name)
    yield database
    drop_database(database)


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def client(standin, db, loop):
    from prisma import Prisma

    # The URL reaches the stand-in as Prisma Client Python's datasource override, as LiteLLM may pass it.
    prisma = Prisma(datasource={"url": db.url})
    loop.run_until_complete(prisma.connect())
    yield prisma
    loop.run_until_complete(prisma.disconnect())


@pytest.fixture
def run(loop):
    return loop.run_until_complete


# --- helpers ---------------------------------------------------------------------------------------

def Json(value):  # noqa: N802 - prisma.Json, imported once the fixture has generated the client
    from prisma import Json as PrismaJson

    return PrismaJson(value)


@pytest.fixture
def errors(client):
    import prisma.errors

    return prisma.errors


def uid(prefix: str) -> str:
    """An id no other test of the module uses (they share one database)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sql(db, query: str) -> str:
    """The single value a SQL query returns, as psql prints it."""
    return db.psql(query).stdout.strip()


def budget(client, run, budget_id: str, **fields):
    return run(client.litellm_budgettable.create(
        data={"budget_id": budget_id, "created_by": "test", "updated_by": "test", **fields}))


def users(client, run, prefix: str, rows: list[dict]):
    for i, row in enumerate(rows):
        run(client.litellm_usertable.create(data={"user_id": f"{prefix}-{i}", **row}))


def ids(records) -> list[str]:
    return [r.user_id for r in records]


# --- reads -----------------------------------------------------------------------------------------

def test_create_then_find_unique_reads_every_field_back(client, run, db):
    from prisma import Json

    created = run(client.litellm_usertable.create(data={"user_id": "u-create", "spend": 1.5, "models": ["a", "b"],
                                                         "metadata": Json({"team": "x"})}))
    found = run(client.litellm_usertable.find_unique(where={"user_id": "u-create"}))
    assert (created.user_id, found.user_id, found.spend, found.models, found.metadata) == (
        "u-create", "u-create", 1.5, ["a", "b"], {"team": "x"})


# --- the engine binaries themselves ----------------------------------------------------------------

def test_version_prints_the_engine_commit_prisma_client_python_expects(standin):
    r = subprocess.run([str(standin / "query-engine"), "--version"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, f"query-engine {ENGINE_COMMIT}")


@pytest.mark.parametrize("args", [[], ["--datamodels", "schema.prisma"], ["cli", "migrate-diff"]])
def test_schema_engine_stub_refuses_everything_but_version(args):
    stub = str(STANDIN_SOURCE / "schema-engine")
    version = subprocess.run([stub, "--version"], capture_output=True, text=True, timeout=10)
    refused = subprocess.run([stub, *args], capture_output=True, text=True, timeout=10)
    assert (version.returncode, version.stdout.strip()) == (0, f"schema-engine-cli {ENGINE_COMMIT}")
    assert refused.returncode != 0 and refused.stdout == ""
    assert "schema-engine stub" in refused.stderr and "not supported" in refused.stderr
    assert "DISABLE_SCHEMA_UPDATE=true" in refused.stderr


def test_find_first_honours_where_and_order(client, run):
    p = uid("first")
    users(client, run, p, [{"spend": 3.0}, {"spend": 1.0}, {"spend": 2.0}])
    first = run(client.litellm_usertable.find_first(where={"user_id": {"startswith": p}}, order={"spend": "asc"}))
    assert (first.user_id, first.spend) == (f"{p}-1", 1.0)


def test_find_first_without_a_match_is_none(client, run):
    assert run(client.litellm_usertable.find_first(where={"user_id": uid("nobody")})) is None


def test_find_many_with_order_take_and_skip(client, run):
    p = uid("many")
    users(client, run, p, [{"spend": float(i)} for i in range(5)])
    page = run(client.litellm_usertable.find_many(where={"user_id": {"startswith": p}}, order={"spend": "desc"},
                                                  take=2, skip=1))
    assert ids(page) == [f"{p}-3", f"{p}-2"]


def test_count_with_a_filter(client, run):
    p = uid("count")
    users(client, run, p, [{"user_role": "proxy_admin"}, {"user_role": "internal_user"}, {"user_role": "proxy_admin"}])
    n = run(client.litellm_usertable.count(where={"user_id": {"startswith": p}, "user_role": "proxy_admin"}))
    assert n == 2


def test_distinct_returns_one_row_per_value(client, run):
    p = uid("distinct")
    users(client, run, p, [{"user_role": "a"}, {"user_role": "b"}, {"user_role": "a"}])
    rows = run(client.litellm_usertable.find_many(where={"user_id": {"startswith": p}}, distinct=["user_role"],
                                                  order={"user_role": "asc"}))
    assert [r.user_role for r in rows] == ["a", "b"]


def test_or_filter_matches_either_branch(client, run):
    p = uid("or")
    users(client, run, p, [{"user_role": "a"}, {"user_email": "x@example.org"}, {"user_role": "c"}])
    rows = run(client.litellm_usertable.find_many(
        where={"user_id": {"startswith": p}, "OR": [{"user_role": "a"}, {"user_email": {"contains": "@example"}}]},
        order={"user_id": "asc"}))
    assert ids(rows) == [f"{p}-0", f"{p}-1"]


def test_null_filters_select_rows_with_and_without_a_value(client, run):
    p = uid("null")
    users(client, run, p, [{"user_email": "a@example.org"}, {}])
    where = {"user_id": {"startswith": p}}
    without = run(client.litellm_usertable.find_many(where={**where, "user_email": None}))
    with_ = run(client.litellm_usertable.find_many(where={**where, "user_email": {"not": None}}))
    assert (ids(without), ids(with_), with_[0].user_email) == ([f"{p}-1"], [f"{p}-0"], "a@example.org")


def test_datetime_filters_gt_and_lt(client, run):
    p = uid("when")
    base = datetime(2030, 6, 1, tzinfo=timezone.utc)
    users(client, run, p, [{"budget_reset_at": base + timedelta(days=d)} for d in (-1, 0, 1)])
    rows = run(client.litellm_usertable.find_many(
        where={"user_id": {"startswith": p}, "budget_reset_at": {"gt": base - timedelta(hours=1),
                                                                  "lt": base + timedelta(hours=1)}}))
    assert (ids(rows), rows[0].budget_reset_at) == ([f"{p}-1"], base)


def test_include_loads_the_related_budget(client, run):
    b, token = uid("budget"), uid("tok")
    budget(client, run, b, max_budget=12.5)
    run(client.litellm_verificationtoken.create(data={"token": token, "models": [], "budget_id": b}))
    key = run(client.litellm_verificationtoken.find_unique(where={"token": token},
                                                           include={"litellm_budget_table": True}))
    assert (key.litellm_budget_table.budget_id, key.litellm_budget_table.max_budget) == (b, 12.5)


def test_include_a_list_relation_with_its_own_filter(client, run):
    b = uid("budget")
    budget(client, run, b)
    for name in ("k1", "k2"):
        run(client.litellm_verificationtoken.create(data={"token": f"{b}-{name}", "models": [], "budget_id": b,
                                                          "key_alias": name}))
    found = run(client.litellm_budgettable.find_unique(
        where={"budget_id": b}, include={"keys": {"where": {"key_alias": "k2"}}}))
    assert [k.token for k in found.keys] == [f"{b}-k2"]


def test_in_and_not_in_filters(client, run):
    p = uid("in")
    users(client, run, p, [{"user_role": "a"}, {"user_role": "b"}, {"user_role": "c"}])
    where = {"user_id": {"startswith": p}}
    in_ = run(client.litellm_usertable.find_many(where={**where, "user_role": {"in": ["a", "c"]}},
                                                  order={"user_id": "asc"}))
    not_in = run(client.litellm_usertable.find_many(where={**where, "user_role": {"not_in": ["a", "c"]}}))
    assert (ids(in_), ids(not_in)) == ([f"{p}-0", f"{p}-2"], [f"{p}-1"])


def test_case_insensitive_mode(client, run):
    p = uid("mode")
    users(client, run, p, [{"user_email": "Alice@Example.org"}, {"user_email": "bob@example.org"}])
    rows = run(client.litellm_usertable.find_many(
        where={"user_id": {"startswith": p}, "user_email": {"contains": "alice", "mode": "insensitive"}}))
    assert ids(rows) == [f"{p}-0"]


# --- writes ----------------------------------------------------------------------------------------

def test_create_connecting_an_existing_related_row(client, run, db):
    b, token = uid("budget"), uid("tok")
    budget(client, run, b)
    run(client.litellm_verificationtoken.create(
        data={"token": token, "models": [], "litellm_budget_table": {"connect": {"budget_id": b}}}))
    assert sql(db, f"""SELECT budget_id FROM "LiteLLM_VerificationToken" WHERE token = '{token}'""") == b


def test_nested_create_and_disconnect_of_a_relation(client, run, db):
    b, token = uid("budget"), uid("tok")
    run(client.litellm_verificationtoken.create(data={"token": token, "models": [], "litellm_budget_table": {
        "create": {"budget_id": b, "max_budget": 3.0, "created_by": "t", "updated_by": "t"}}}))
    linked = sql(db, f"""SELECT b.max_budget FROM "LiteLLM_VerificationToken" k
                         JOIN "LiteLLM_BudgetTable" b USING (budget_id) WHERE k.token = '{token}'""")
    run(client.litellm_verificationtoken.update(where={"token": token},
                                                data={"litellm_budget_table": {"disconnect": True}}))
    key = run(client.litellm_verificationtoken.find_unique(where={"token": token}))
    assert (linked, key.budget_id, run(client.litellm_budgettable.count(where={"budget_id": b}))) == ("3", None, 1)


def test_strings_with_quotes_escapes_and_unicode_round_trip(client, run, db):
    u, text = uid("str"), 'quote " backslash \\ newline \n tab \t unicode é 漢 🚀 $1 {braces}'
    run(client.litellm_usertable.create(data={"user_id": u, "user_alias": text}))
    found = run(client.litellm_usertable.find_first(where={"user_alias": text}))
    stored = sql(db, f"""SELECT user_alias = $q${text}$q$ FROM "LiteLLM_UserTable" WHERE user_id = '{u}'""")
    assert (found.user_id, found.user_alias, stored) == (u, text, "t")


def test_update_changes_only_the_given_fields(client, run):
    u = uid("upd")
    run(client.litellm_usertable.create(data={"user_id": u, "user_email": "old@example.org", "spend": 1.0}))
    updated = run(client.litellm_usertable.update(where={"user_id": u}, data={"spend": {"increment": 0.5}}))
    assert (updated.spend, updated.user_email) == (1.5, "old@example.org")


def test_update_of_a_missing_row_is_none(client, run):
    # Prisma Client Python turns the engine's "record not found" into None for update().
    assert run(client.litellm_usertable.update(where={"user_id": uid("ghost")}, data={"spend": 1.0})) is None


def test_upsert_creates_when_missing(client, run):
    u = uid("ups")
    row = run(client.litellm_usertable.upsert(where={"user_id": u},
                                              data={"create": {"user_id": u, "spend": 1.0}, "update": {"spend": 9.0}}))
    assert (row.user_id, row.spend) == (u, 1.0)


def test_upsert_updates_when_present(client, run):
    u = uid("ups")
    run(client.litellm_usertable.create(data={"user_id": u, "spend": 1.0}))
    row = run(client.litellm_usertable.upsert(where={"user_id": u},
                                              data={"create": {"user_id": u, "spend": 1.0}, "update": {"spend": 9.0}}))
    assert (row.spend, run(client.litellm_usertable.count(where={"user_id": u}))) == (9.0, 1)


def test_update_many_reports_and_applies_the_count(client, run):
    p = uid("updmany")
    users(client, run, p, [{"user_role": "a"}, {"user_role": "a"}, {"user_role": "b"}])
    n = run(client.litellm_usertable.update_many(where={"user_id": {"startswith": p}, "user_role": "a"},
                                                 data={"max_budget": 5.0}))
    rows = run(client.litellm_usertable.find_many(where={"user_id": {"startswith": p}}, order={"user_id": "asc"}))
    assert (n, [r.max_budget for r in rows]) == (2, [5.0, 5.0, None])


def test_create_many_and_skip_duplicates(client, run):
    p = uid("cm")
    n = run(client.litellm_usertable.create_many(data=[{"user_id": f"{p}-0"}, {"user_id": f"{p}-1"}]))
    again = run(client.litellm_usertable.create_many(data=[{"user_id": f"{p}-1"}, {"user_id": f"{p}-2"}],
                                                     skip_duplicates=True))
    rows = run(client.litellm_usertable.find_many(where={"user_id": {"startswith": p}}, order={"user_id": "asc"}))
    assert (n, again, ids(rows)) == (2, 1, [f"{p}-0", f"{p}-1", f"{p}-2"])


def test_delete_returns_the_row_and_removes_it(client, run):
    u = uid("del")
    run(client.litellm_usertable.create(data={"user_id": u, "user_alias": "gone"}))
    deleted = run(client.litellm_usertable.delete(where={"user_id": u}))
    assert (deleted.user_alias, run(client.litellm_usertable.find_unique(where={"user_id": u}))) == ("gone", None)


def test_delete_many_reports_the_count(client, run):
    p = uid("delmany")
    users(client, run, p, [{}, {}, {"user_role": "keep"}])
    n = run(client.litellm_usertable.delete_many(where={"user_id": {"startswith": p}, "user_role": None}))
    left = run(client.litellm_usertable.find_many(where={"user_id": {"startswith": p}}))
    assert (n, ids(left)) == (2, [f"{p}-2"])


def test_group_by_with_count_and_sum(client, run):
    p = uid("group")
    users(client, run, p, [{"user_role": "a", "spend": 1.0}, {"user_role": "a", "spend": 2.5},
                           {"user_role": "b", "spend": 4.0}])
    groups = run(client.litellm_usertable.group_by(["user_role"], where={"user_id": {"startswith": p}},
                                                   count=True, sum={"spend": True}, order={"user_role": "asc"}))
    assert [(g["user_role"], g["_count"]["_all"], g["_sum"]["spend"]) for g in groups] == [("a", 2, 3.5),
                                                                                             ("b", 1, 4.0)]


# --- value types -----------------------------------------------------------------------------------

def test_json_object_is_stored_as_a_jsonb_object(client, run, db):
    u = uid("json")
    run(client.litellm_usertable.create(data={"user_id": u, "metadata": Json({"a": {"b": [1, 2]}, "c": None})}))
    found = run(client.litellm_usertable.find_unique(where={"user_id": u}))
    kinds = sql(db, f"""SELECT jsonb_typeof(metadata) || ',' || jsonb_typeof(metadata->'a'->'b')
                        FROM "LiteLLM_UserTable" WHERE user_id = '{u}'""")
    assert (found.metadata, kinds) == ({"a": {"b": [1, 2]}, "c": None}, "object,array")


def test_json_given_as_json_text_as_litellm_writes_it(client, run, db):
    # LiteLLM often passes json.dumps(...) text, not prisma.Json, for Json fields (budget_limits,
    # router_settings); json.dumps(None) is how it clears a Json? column.
    token = uid("tok")
    run(client.litellm_verificationtoken.create(data={"token": token, "models": [],
                                                      "budget_limits": json.dumps([{"budget_duration": "1d"}]),
                                                      "router_settings": json.dumps(None)}))
    key = run(client.litellm_verificationtoken.find_unique(where={"token": token}))
    kinds = sql(db, f"""SELECT jsonb_typeof(budget_limits) || ',' || jsonb_typeof(router_settings)
                        FROM "LiteLLM_VerificationToken" WHERE token = '{token}'""")
    assert (key.budget_limits, key.router_settings, kinds) == ([{"budget_duration": "1d"}], None, "array,null")


def test_json_update_stays_an_object(client, run, db):
    u = uid("json")
    run(client.litellm_usertable.create(data={"user_id": u}))
    run(client.litellm_usertable.update(where={"user_id": u}, data={"model_spend": Json({"gpt": 0.25})}))
    stored = sql(db, f"""SELECT jsonb_typeof(model_spend) || ' ' || (model_spend->>'gpt')
                         FROM "LiteLLM_UserTable" WHERE user_id = '{u}'""")
    assert stored == "object 0.25"


def test_json_path_filter_equals(client, run):
    p = uid("jpath")
    users(client, run, p, [{"metadata": Json({"team": "red"})}, {"metadata": Json({"team": "blue"})}])
    rows = run(client.litellm_usertable.find_many(
        where={"user_id": {"startswith": p}, "metadata": {"path": ["team"], "equals": Json("blue")}}))
    assert ids(rows) == [f"{p}-1"]


def test_json_path_filter_string_contains_as_litellm_uses_it(client, run):
    # LiteLLM's spend-log search filters metadata with {"path": [...], "string_contains": ...}.
    p = uid("jpath")
    users(client, run, p, [{"metadata": Json({"alias": "prod-key"})}, {"metadata": Json({"alias": "dev"})}])
    rows = run(client.litellm_usertable.find_many(
        where={"user_id": {"startswith": p}, "metadata": {"path": ["alias"], "string_contains": "prod"}}))
    assert ids(rows) == [f"{p}-0"]


def test_json_in_create_many_and_litellm_style_string_filter(client, run, db):
    # LiteLLM writes Json filter values as JSON text in a plain string ("equals": f'"{code}"').
    p = uid("jcm")
    run(client.litellm_usertable.create_many(data=[
        {"user_id": f"{p}-0", "metadata": Json({"error": {"code": "429"}})},
        {"user_id": f"{p}-1", "metadata": Json({"error": {"code": "500"}})}]))
    rows = run(client.litellm_usertable.find_many(
        where={"user_id": {"startswith": p}, "metadata": {"path": ["error", "code"], "equals": '"500"'}}))
    kinds = sql(db, f"""SELECT string_agg(DISTINCT jsonb_typeof(metadata), ',') FROM "LiteLLM_UserTable"
                        WHERE user_id LIKE '{p}-%'""")
    assert (ids(rows), rows[0].metadata, kinds) == ([f"{p}-1"], {"error": {"code": "500"}}, "object")


def test_json_array_and_scalar_values(client, run, db):
    name = uid("cfg")
    run(client.litellm_config.create(data={"param_name": name, "param_value": Json(["a", 1, True, None])}))
    run(client.litellm_config.create(data={"param_name": name + "-s", "param_value": Json("just text")}))
    values = [run(client.litellm_config.find_unique(where={"param_name": n})).param_value for n in (name, name + "-s")]
    kinds = sql(db, f"""SELECT string_agg(jsonb_typeof(param_value), ',' ORDER BY param_name)
                        FROM "LiteLLM_Config" WHERE param_name LIKE '{name}%'""")
    assert (values, kinds) == ([["a", 1, True, None], "just text"], "array,string")


def test_bytes_round_trip(client, run, db):
    from prisma.fields import Base64

    row = run(client.litellm_managedfilecontenttable.create(data={"content": Base64.encode(b"\x00\xffzip")}))
    found = run(client.litellm_managedfilecontenttable.find_unique(where={"id": row.id}))
    stored = sql(db, f"""SELECT encode(content, 'hex') FROM "LiteLLM_ManagedFileContentTable" WHERE id = '{row.id}'""")
    assert (found.content.decode(), stored) == (b"\x00\xffzip", "00ff7a6970")


def test_enum_values_round_trip_and_filter(client, run):
    pod = uid("pod")
    ttl = datetime(2032, 1, 1, tzinfo=timezone.utc)
    run(client.litellm_cronjob.create(data={"pod_id": pod, "status": "ACTIVE", "ttl": ttl}))
    found = run(client.litellm_cronjob.find_first(where={"pod_id": pod, "status": "ACTIVE"}))
    inactive = run(client.litellm_cronjob.count(where={"pod_id": pod, "status": "INACTIVE"}))
    assert (found.pod_id, found.status, found.ttl, inactive) == (pod, "ACTIVE", ttl, 0)


def test_bigint_beyond_2_to_the_53_round_trips_exactly(client, run, db):
    b, big = uid("budget"), 9007199254740993  # 2**53 + 1: a double would make it ...992
    budget(client, run, b, tpm_limit=big)
    found = run(client.litellm_budgettable.find_unique(where={"budget_id": b}))
    stored = sql(db, f"""SELECT tpm_limit FROM "LiteLLM_BudgetTable" WHERE budget_id = '{b}'""")
    assert (found.tpm_limit, stored) == (big, str(big))


def test_bigint_increment_and_filter_stay_exact(client, run):
    b, big = uid("budget"), 9007199254740993
    budget(client, run, b, tpm_limit=big)
    run(client.litellm_budgettable.update(where={"budget_id": b}, data={"tpm_limit": {"increment": 2}}))
    found = run(client.litellm_budgettable.find_first(where={"budget_id": b, "tpm_limit": {"equals": big + 2}}))
    assert found.tpm_limit == 9007199254740995


def test_datetime_with_a_timezone_round_trips_as_the_same_instant(client, run, db):
    u = uid("tz")
    local = datetime(2031, 1, 2, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2)))
    run(client.litellm_usertable.create(data={"user_id": u, "budget_reset_at": local}))
    found = run(client.litellm_usertable.find_unique(where={"user_id": u}))
    stored = sql(db, f"""SELECT budget_reset_at FROM "LiteLLM_UserTable" WHERE user_id = '{u}'""")
    assert (found.budget_reset_at, found.budget_reset_at.utcoffset(), stored) == (
        local, timedelta(0), "2031-01-02 01:04:05.678")


def test_string_list_set_push_and_has(client, run):
    u = uid("list")
    run(client.litellm_usertable.create(data={"user_id": u, "models": ["a"]}))
    run(client.litellm_usertable.update(where={"user_id": u}, data={"models": {"push": ["b", "c"]}}))
    pushed = run(client.litellm_usertable.find_first(where={"user_id": u, "models": {"has": "c"}})).models
    run(client.litellm_usertable.update(where={"user_id": u}, data={"models": {"set": ["z"]}}))
    assert (pushed, run(client.litellm_usertable.find_unique(where={"user_id": u})).models) == (["a", "b", "c"],
                                                                                                ["z"])


# --- raw SQL ---------------------------------------------------------------------------------------

def test_query_raw_with_an_array_parameter(client, run):
    p = uid("raw")
    users(client, run, p, [{"spend": 1.0}, {"spend": 2.0}, {"spend": 3.0}])
    rows = run(client.query_raw('SELECT user_id, spend FROM "LiteLLM_UserTable" WHERE user_id = ANY($1) '
                                "ORDER BY user_id", [f"{p}-0", f"{p}-2"]))
    assert rows == [{"user_id": f"{p}-0", "spend": 1.0}, {"user_id": f"{p}-2", "spend": 3.0}]


def test_query_raw_returns_name_and_interval_columns_as_text(client, run, db):
    # adapter-pg 5.17 cannot describe these column types; the stand-in reads them as text.
    row = run(client.query_first("SELECT current_user::name AS who, interval '1 day' AS span, "
                                 "'\"LiteLLM_UserTable\"'::regclass AS tbl"))
    assert row == {"who": sql(db, "SELECT current_user"), "span": "1 day", "tbl": '"LiteLLM_UserTable"'}


def test_query_raw_scalar_types(client, run):
    row = run(client.query_first("SELECT 9007199254740993::bigint AS big, 1.5::float8 AS f, true AS t, "
                                 "'{\"a\": 1}'::jsonb AS j, ARRAY['x','y'] AS arr, NULL::text AS nothing, "
                                 "1.25::numeric AS d"))
    assert row == {"big": 9007199254740993, "f": 1.5, "t": True, "j": {"a": 1}, "arr": ["x", "y"], "nothing": None,
                   "d": 1.25}  # Prisma Client Python reads raw numerics as float


def test_query_raw_with_a_datetime_parameter(client, run):
    p = uid("spend")
    start = datetime(2033, 3, 1, 12, tzinfo=timezone.utc)
    for i in range(3):
        run(client.litellm_spendlogs.create(data={"request_id": f"{p}-{i}", "call_type": "completion", "spend": 0.5,
                                                  "startTime": start + timedelta(hours=i), "endTime": start}))
    row = run(client.query_first('SELECT count(*) AS n, sum(spend) AS total, min("startTime") AS first '
                                 'FROM "LiteLLM_SpendLogs" WHERE request_id LIKE $1 AND "startTime" >= $2::timestamp',
                                 f"{p}-%", start + timedelta(hours=1)))
    # Prisma Client Python leaves raw datetimes as the engine's ISO text (it parses them only for model=).
    assert row == {"n": 2, "total": 1.0, "first": "2033-03-01T13:00:00+00:00"}


def test_query_raw_jsonb_shaped_like_a_protocol_tag_is_left_alone(client, run):
    # The JSON protocol tags values as {"$type": .., "value": ..}; raw rows are not tagged, so a stored
    # object of that shape must come back whole.
    row = run(client.query_first("""SELECT '{"$type": "Json", "value": "x"}'::jsonb AS j"""))
    assert row == {"j": {"$type": "Json", "value": "x"}}


def test_execute_raw_returns_the_affected_row_count(client, run):
    p = uid("exec")
    users(client, run, p, [{}, {}, {}])
    n = run(client.execute_raw('UPDATE "LiteLLM_UserTable" SET spend = $1 WHERE user_id LIKE $2', 7.0, f"{p}-%"))
    spends = [r.spend for r in run(client.litellm_usertable.find_many(where={"user_id": {"startswith": p}}))]
    assert (n, spends) == (3, [7.0, 7.0, 7.0])


# --- batches and transactions ----------------------------------------------------------------------

def test_batch_commits_several_writes_together(client, run):
    p = uid("batch")

    async def write():
        async with client.batch_() as batch:
            batch.litellm_usertable.create(data={"user_id": f"{p}-0"})
            batch.litellm_usertable.create(data={"user_id": f"{p}-1", "spend": 2.0})
            batch.litellm_usertable.update(where={"user_id": f"{p}-0"}, data={"spend": 1.0})
            batch.execute_raw('UPDATE "LiteLLM_UserTable" SET user_role = $1 WHERE user_id = $2', "raw", f"{p}-1")

    run(write())
    rows = run(client.litellm_usertable.find_many(where={"user_id": {"startswith": p}}, order={"user_id": "asc"}))
    assert [(r.user_id, r.spend, r.user_role) for r in rows] == [(f"{p}-0", 1.0, None), (f"{p}-1", 2.0, "raw")]


def test_failing_batch_writes_nothing(client, run, errors):
    p = uid("batch")
    run(client.litellm_usertable.create(data={"user_id": f"{p}-dup"}))

    async def write():
        async with client.batch_() as batch:
            batch.litellm_usertable.create(data={"user_id": f"{p}-new"})
            batch.litellm_usertable.create(data={"user_id": f"{p}-dup"})

    with pytest.raises(errors.UniqueViolationError):
        run(write())
    assert run(client.litellm_usertable.find_unique(where={"user_id": f"{p}-new"})) is None


def test_transaction_commits(client, run):
    u = uid("tx")

    async def work():
        async with client.tx() as tx:
            await tx.litellm_usertable.create(data={"user_id": u, "spend": 1.0})
            await tx.litellm_usertable.update(where={"user_id": u}, data={"spend": {"increment": 1.0}})
            return await tx.litellm_usertable.find_unique(where={"user_id": u})

    inside = run(work())
    assert (inside.spend, run(client.litellm_usertable.find_unique(where={"user_id": u})).spend) == (2.0, 2.0)


def test_transaction_rolls_back_on_an_exception(client, run):
    u = uid("tx")

    async def work():
        async with client.tx() as tx:
            await tx.litellm_usertable.create(data={"user_id": u})
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        run(work())
    assert run(client.litellm_usertable.find_unique(where={"user_id": u})) is None


def test_batch_inside_a_transaction_as_litellm_writes_spend(client, run):
    # LiteLLM's spend writer: tx() -> batch_() -> update_many(increment) per row, then commit.
    p = uid("txbatch")
    users(client, run, p, [{"spend": 1.0}, {"spend": 2.0}])

    async def work():
        async with client.tx() as tx:
            async with tx.batch_() as batch:
                for i, cost in enumerate((0.25, 0.5)):
                    batch.litellm_usertable.update_many(where={"user_id": f"{p}-{i}"},
                                                        data={"spend": {"increment": cost}})

    run(work())
    rows = run(client.litellm_usertable.find_many(where={"user_id": {"startswith": p}}, order={"user_id": "asc"}))
    assert [r.spend for r in rows] == [1.25, 2.5]


def test_batch_inside_a_rolled_back_transaction_writes_nothing(client, run):
    u = uid("txbatch")
    run(client.litellm_usertable.create(data={"user_id": u, "spend": 1.0}))

    async def work():
        async with client.tx() as tx:
            async with tx.batch_() as batch:
                batch.litellm_usertable.update_many(where={"user_id": u}, data={"spend": {"increment": 5.0}})
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        run(work())
    assert run(client.litellm_usertable.find_unique(where={"user_id": u})).spend == 1.0


def test_transaction_is_isolated_until_commit(client, run):
    u = uid("tx")
    seen_outside = []

    async def work():
        async with client.tx() as tx:
            await tx.litellm_usertable.create(data={"user_id": u})
            seen_outside.append(await client.litellm_usertable.find_unique(where={"user_id": u}))

    run(work())
    assert (seen_outside, run(client.litellm_usertable.count(where={"user_id": u}))) == ([None], 1)


# --- errors ----------------------------------------------------------------------------------------

def test_unique_violation_is_a_unique_violation_error(client, run, errors):
    u = uid("uniq")
    run(client.litellm_usertable.create(data={"user_id": u}))
    with pytest.raises(errors.UniqueViolationError) as raised:
        run(client.litellm_usertable.create(data={"user_id": u}))
    assert raised.value.code == "P2002"


def test_find_unique_or_raise_on_a_missing_row(client, run, errors):
    u = uid("missing")
    with pytest.raises(errors.RecordNotFoundError):
        run(client.litellm_usertable.find_unique_or_raise(where={"user_id": u}))
    run(client.litellm_usertable.create(data={"user_id": u, "user_alias": "here"}))
    assert run(client.litellm_usertable.find_unique_or_raise(where={"user_id": u})).user_alias == "here"


def test_find_first_or_raise_and_delete_of_a_missing_row(client, run, errors):
    with pytest.raises(errors.RecordNotFoundError):
        run(client.litellm_usertable.find_first_or_raise(where={"user_id": uid("missing")}))
    # delete() of a missing row: the engine's P2025, which Prisma Client Python returns as None.
    assert run(client.litellm_usertable.delete(where={"user_id": uid("missing")})) is None


def test_foreign_key_violation_is_reported(client, run, errors):
    with pytest.raises(errors.ForeignKeyViolationError):
        run(client.litellm_verificationtoken.create(data={"token": uid("tok"), "models": [],
                                                          "budget_id": uid("no-such-budget")}))
