"""Settings: every bad input is refused with the field and the fix, before any operation exists."""

import pytest

from tasks.config.settings import ConfigError
from tests.unit.conftest import OLLAMA_NODES, UPSTREAM_KEY, example_models, group_data, lookup


def test_shipped_defaults_are_valid_and_pinned(build):
    settings = build()
    assert settings.litellm_image.startswith("ghcr.io/berriai/litellm-database:")
    assert settings.litellm_image.rsplit(":", 1)[1] not in ("latest", "main-latest")
    assert settings.postgres_image == "postgres:16"
    assert (settings.install_dir, settings.proxy_port, settings.database_mode) == ("/opt/litellm", 4000, "bundled")
    assert [m.api_base for m in settings.models] == [
        "http://host.docker.internal:11434", "http://192.0.2.20:11434", "http://192.0.2.30:4000"]


def test_shipped_gateway_models_route_every_provider_of_the_old_setup():
    providers = {m["model"].split("/")[0] for m in group_data("litellm_hosts")["models"]}
    assert providers == {"openai", "anthropic", "ollama_chat"}


def test_smoke_test_defaults_on_for_free_endpoints_only(build, secrets_file):
    secrets_file.write_text(secrets_file.read_text() + 'OPENAI_API_KEY="sk-openai-test"\n')
    models = example_models() + [{"name": "gpt", "model": "openai/gpt-4o", "api_key_env": "OPENAI_API_KEY"}]
    settings = build(models=models)
    assert {m.name: m.smoke_test for m in settings.models} == {
        "llama-local": True, "llama-smarthome": True, "upstream": True, "gpt": False}


def model(**fields):
    return [{"name": "m", "model": "ollama_chat/llama3", "ollama_node": "local", **fields}]


BAD_INPUTS = [
    ("litellm_image", {"litellm_image": "ghcr.io/berriai/litellm-database:main-latest"}),
    ("litellm_image", {"litellm_image": "ghcr.io/berriai/litellm-database"}),
    ("postgres_image", {"postgres_image": "postgres:latest"}),
    ("database_mode", {"database_mode": "sqlite"}),
    ("docker_install", {"docker_install": "snap"}),
    ("image_source", {"image_source": "ftp"}),
    ("image_archives", {"image_source": "archives", "image_archives": ["/nonexistent/litellm.tar.gz"]}),
    ("proxy_port", {"proxy_port": 70000}),
    ("proxy_port", {"proxy_port": "4000"}),
    ("postgres_publish_port", {"postgres_publish_port": 4000}),
    ("install_dir", {"install_dir": "relative/dir"}),
    ("compose_project", {"compose_project": "Bad Name"}),
    ("postgres_user", {"postgres_user": "x; DROP"}),
    ("proxy_bind", {"proxy_bind": "everywhere"}),
    ("proxy_base_url", {"proxy_base_url": "gateway.example.com"}),
    ("models", {"models": []}),
    ("models[1].name", {"models": example_models()[:1] + [dict(example_models()[0])]}),
    ("models[0].model", {"models": model(model="llama3")}),
    ("models[0].model", {"models": model(model="olama/llama3")}),
    ("models[0].api_base", {"models": [{"name": "u", "model": "openai/x", "api_base": "not a url"}]}),
    ("models[0].ollama_node", {"models": model(ollama_node="kitchen")}),
    ("models[0].ollama_node", {"models": [{"name": "m", "model": "ollama_chat/llama3"}]}),
    ("models[0].api_key_env", {"models": [{"name": "g", "model": "openai/gpt-4o", "api_key_env": "sk-real-key"}]}),
    ("models[0]", {"models": model(apikey="x")}),
    ("OPENAI_API_KEY", {"models": [{"name": "g", "model": "openai/gpt-4o", "api_key_env": "OPENAI_API_KEY"}]}),
    ("store_model_in_db", {"store_model_in_db": True, "database_mode": "none"}),
    ("DATABASE_URL", {"database_mode": "external"}),
    ("verify_timeout", {"verify_timeout": 0}),
    ("start_timeout", {"start_timeout": True}),
]


@pytest.mark.parametrize("field,data", BAD_INPUTS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_INPUTS)])
def test_bad_input_names_the_field(build, field, data):
    with pytest.raises(ConfigError) as error:
        build(**data)
    assert any(field in problem for problem in error.value.problems), error.value.problems
    assert "nothing was changed on any host" in str(error.value)


BAD_SECRETS = [
    ("LITELLM_MASTER_KEY", "LITELLM_MASTER_KEY=no-prefix-" + "x" * 40),
    ("LITELLM_MASTER_KEY", "LITELLM_MASTER_KEY=sk-short"),
    ("LITELLM_MASTER_KEY", "LITELLM_MASTER_KEY=sk-1234"),
    ("LITELLM_SALT_KEY", "LITELLM_SALT_KEY=tooshort"),
    ("POSTGRES_PASSWORD", "POSTGRES_PASSWORD=pw"),
    ("UI_PASSWORD", "UI_PASSWORD=admin"),
]


@pytest.mark.parametrize("field,line", BAD_SECRETS)
def test_bad_secret_names_the_field_and_is_never_printed(build, secrets_file, field, line):
    secrets_file.write_text(secrets_file.read_text() + line + "\n")
    with pytest.raises(ConfigError) as error:
        build()
    assert any(problem.startswith(field) for problem in error.value.problems)
    assert line.split("=", 1)[1] not in str(error.value)


def test_published_values_are_refused(build, secrets_file, monkeypatch):
    from tasks.config import secrets

    # The real list holds only digests of the old guide's values; prove the mechanism with one of ours.
    planted = "sk-planted-guide-value"
    monkeypatch.setattr(secrets, "_PUBLISHED", {(len(planted), __import__("hashlib").sha256(planted.encode()).hexdigest())})
    secrets_file.write_text(secrets_file.read_text() + f'UI_PASSWORD="prefix-{planted}-suffix"\n')
    with pytest.raises(ConfigError) as error:
        build()
    assert any(p.startswith("UI_PASSWORD: this value was published") for p in error.value.problems)


def test_every_problem_of_every_host_is_reported_at_once(build):
    with pytest.raises(ConfigError) as error:
        build(hosts={"gw1": {"proxy_port": 0}, "gw2": {"database_mode": "sqlite", "models": model(model="x")}})
    problems = error.value.problems
    assert any(p.startswith("host gw1: proxy_port") for p in problems)
    assert any(p.startswith("host gw2: database_mode") for p in problems)
    assert any(p.startswith("host gw2: models[0].model") for p in problems)


def test_bad_input_writes_nothing_not_even_the_secrets_file(build, secrets_file):
    before = secrets_file.read_text()
    with pytest.raises(ConfigError):
        build(proxy_port=0)
    assert secrets_file.read_text() == before


def test_loose_secrets_file_mode_is_refused(build, secrets_file):
    secrets_file.chmod(0o644)
    with pytest.raises(ConfigError) as error:
        build()
    assert any("chmod 600" in p for p in error.value.problems)


def test_secrets_never_show_in_settings_repr(build):
    settings = build()
    assert settings.secrets.master_key not in repr(settings)
    assert UPSTREAM_KEY not in repr(settings)


# --- issue 15, defect 7: input the checks used to miss ---------------------------------------------


@pytest.mark.parametrize("bind", ["999.1.1.1", ":::", "1.2.3", "localhost", "0.0.0.0 ", "", 4000])
def test_proxy_bind_must_be_an_ip_address(build, bind):
    with pytest.raises(ConfigError) as error:
        build(proxy_bind=bind)
    [problem] = error.value.problems
    assert problem.startswith("host gw1: proxy_bind:") and "not an IP address" in problem and "127.0.0.1" in problem


@pytest.mark.parametrize("bind", ["0.0.0.0", "127.0.0.1", "192.0.2.7", "::", "::1", "fd00::7"])
def test_proxy_bind_accepts_ip_addresses(build, bind):
    assert build(proxy_bind=bind).proxy_bind == bind


@pytest.mark.parametrize("mode", ["bundled", "external"])
@pytest.mark.parametrize("image", ["postgres:latest", "postgres:alpine", "postgres:bookworm", "postgres",
                                   "registry.example.com:5000/postgres", "postgres:stable"])
def test_floating_postgres_image_is_refused_with_a_postgres_hint(build, secrets_file, mode, image):
    """External mode runs psql and pg_dump from postgres_image too (tasks/gateway/stack.py required_images)."""
    secrets_file.write_text(secrets_file.read_text() + 'DATABASE_URL="postgresql://u:p4ssword@db.example:5432/l"\n')
    with pytest.raises(ConfigError) as error:
        build(database_mode=mode, postgres_image=image)
    [problem] = error.value.problems
    assert problem.startswith("host gw1: postgres_image:") and "postgres:16.4" in problem
    assert "main-v" not in problem  # not the LiteLLM tag of the litellm_image hint


@pytest.mark.parametrize("image", ["postgres:16", "postgres:16.4", "postgres:16.4-bookworm", "postgres:17-alpine",
                                   "registry.example.com:5000/postgres:16",
                                   "postgres@sha256:" + "a" * 64])
def test_pinned_postgres_images_are_accepted(build, image):
    assert build(postgres_image=image).postgres_image == image


def test_postgres_image_is_not_checked_where_nothing_runs_it(build):
    assert build(database_mode="none", postgres_image="postgres:latest").database_mode == "none"


@pytest.mark.parametrize("schedule", ["daily 03:00", "*-*-* 25:00", "Mon..Fry 02:00", "every day", "3",
                                      "*:*/15", "Fri..Mon", "*-*-* 03:00 Europe/Berlin", "daily\nExecStart=/x", 7])
def test_backup_schedule_systemd_would_refuse_is_refused_before_any_host(build, secrets_file, schedule):
    before = secrets_file.read_bytes()
    with pytest.raises(ConfigError) as error:
        build(backup_schedule=schedule)
    [problem] = error.value.problems
    assert problem.startswith("host gw1: backup_schedule:") and "OnCalendar" in problem and "fix: e.g. daily" in problem
    assert secrets_file.read_bytes() == before


@pytest.mark.parametrize("schedule", ["daily", "weekly", "Mon..Fri 02:30", "*-*-* 03:15:00 UTC", "Sun *-*-1..7 04:00",
                                      "*-*~01 23:00", "*:0/30"])
def test_backup_schedules_systemd_accepts_are_accepted(build, schedule):
    assert build(backup_schedule=schedule).backup_schedule == schedule


@pytest.mark.parametrize("field", ["install_dir", "backup_dir"])
@pytest.mark.parametrize("path", ["/opt/lite llm", "/opt/$HOME", "/opt/it's", '/opt/"x"', "/opt/a;b", "/opt/../etc",
                                  "/opt/litellm/..", "/opt/./litellm", "/opt/`id`", "/opt/litellm\n", "relative", "/"])
def test_directories_must_be_absolute_and_shell_safe(build, field, path):
    with pytest.raises(ConfigError) as error:
        build(**{field: path})
    assert [p for p in error.value.problems if p.startswith(f"host gw1: {field}:")], error.value.problems
    assert all("fix: e.g. /opt/litellm" in p for p in error.value.problems if f"{field}:" in p)


def test_shell_safe_directories_are_accepted(build):
    settings = build(install_dir="/srv/litellm-2.prod/", backup_dir="/var/backups/litellm_2")
    assert (settings.install_dir, settings.backup_dir) == ("/srv/litellm-2.prod/", "/var/backups/litellm_2")


# One policy for every whole-number setting: a number written in quotes is refused with the fix.
NUMBER_FIELDS = {"proxy_port": "4000", "postgres_publish_port": "5433", "verify_timeout": "180",
                 "start_timeout": "180", "backup_keep": "7", "log_max_file": "3", "tls_port": "443",
                 "http_port": "80", "roll_width": "1"}


@pytest.mark.parametrize("field,text", NUMBER_FIELDS.items())
def test_every_number_given_as_text_is_refused_with_the_same_fix(build, field, text):
    with pytest.raises(ConfigError) as error:
        build(**{field: text})
    assert error.value.problems == [f"host gw1: {field}: {text!r} is text — fix: write {text} without quotes"]


def test_the_number_policy_covers_every_integer_setting():
    from tasks.config.settings import DEFAULTS

    integers = {name for name, value in DEFAULTS.items() if isinstance(value, int) and not isinstance(value, bool)}
    assert integers == set(NUMBER_FIELDS)


@pytest.mark.parametrize("field,value", [("proxy_port", 0), ("proxy_port", 4000.0), ("postgres_publish_port", -1),
                                         ("verify_timeout", "3 min"), ("backup_keep", 0), ("log_max_file", True)])
def test_numbers_out_of_range_name_the_range(build, field, value):
    with pytest.raises(ConfigError) as error:
        build(**{field: value})
    [problem] = error.value.problems
    assert problem.startswith(f"host gw1: {field}: {value!r} is not a ")
    assert problem.endswith("-65535)") or problem.endswith(" or more)")


@pytest.mark.parametrize("value,problem", [("0.5", "'0.5' is text"), (-1, "-1 is not"), (61, "61 is not"),
                                           (True, "True is not"), (float("nan"), "nan is not"), (None, "None is not")])
def test_key_cache_ttl_is_seconds_up_to_litellms_own_default(build, value, problem):
    with pytest.raises(ConfigError) as error:
        build(key_cache_ttl=value)
    what = "" if "text" in problem else " a number of seconds (0-60)"
    assert error.value.problems == [f"host gw1: key_cache_ttl: {problem}{what} — fix: a number of seconds without "
                                    "quotes, e.g. 0.5"]
    assert (build(key_cache_ttl=0).key_cache_ttl, build(key_cache_ttl=60).key_cache_ttl) == (0, 60)


@pytest.mark.parametrize("field,text", [("store_model_in_db", "True"), ("backup_enabled", "false")])
def test_flags_given_as_text_are_refused_with_the_fix(build, field, text):
    with pytest.raises(ConfigError) as error:
        build(**{field: text})
    fix = f"write {text.capitalize()} without quotes"
    assert error.value.problems == [f"host gw1: {field}: {text!r} is text — fix: {fix}"]


def test_every_new_check_reports_at_once_and_writes_nothing(build, secrets_file):
    before = secrets_file.read_bytes()
    with pytest.raises(ConfigError) as error:
        build(hosts={"gw1": {"proxy_bind": "999.1.1.1", "postgres_image": "postgres:alpine"},
                     "gw2": {"backup_schedule": "daily 03:00", "install_dir": "/opt/my litellm", "proxy_port": "4000",
                             "log_max_size": "10 MB"}})
    fields = [p.split(":")[0] + ":" + p.split(":")[1] for p in error.value.problems]
    assert fields == ["host gw1: postgres_image", "host gw1: proxy_bind", "host gw2: proxy_port",
                      "host gw2: install_dir", "host gw2: log_max_size", "host gw2: backup_schedule"]
    assert secrets_file.read_bytes() == before


@pytest.mark.parametrize("size", ["10 MB", "10", "0m", "1.5g", "10M", "", 10])
def test_log_max_size_must_be_a_docker_size(build, size):
    with pytest.raises(ConfigError) as error:
        build(log_max_size=size)
    [problem] = error.value.problems
    assert problem.startswith("host gw1: log_max_size:") and "'10m'" in problem


def test_log_rotation_defaults_come_from_group_data(build):
    settings = build()
    assert (settings.log_max_size, settings.log_max_file) == ("10m", 3)
    custom = build(log_max_size="200k", log_max_file=10)
    assert (custom.log_max_size, custom.log_max_file) == ("200k", 10)


def test_every_default_has_one_source_the_declared_fields():
    """Each setting a gateway reads is declared once (tasks/config/fields.py) with its type, default and
    doc; Settings takes its defaults from there and holds none of its own; `models` has no default on
    purpose. The fields Settings does not read are the ones other parts read, each named here."""
    from dataclasses import MISSING, fields

    from tasks.config.fields import BY_NAME, REQUIRED
    from tasks.config.settings import DEFAULTS, Settings

    assert set(DEFAULTS) <= set(BY_NAME), f"not declared: {set(DEFAULTS) - set(BY_NAME)}"
    assert set(BY_NAME) - set(DEFAULTS) == {"ollama_nodes", "private_address", "secrets_file"}
    assert all(DEFAULTS[name] == BY_NAME[name].default for name in DEFAULTS if name != "models")
    assert BY_NAME["models"].default is REQUIRED and DEFAULTS["models"] is None
    assert all(f.default is MISSING for f in fields(Settings))
    assert all(f.doc.strip() and f.type and f.section for f in BY_NAME.values())


def test_the_shipped_group_data_sets_nothing_the_package_defaults():
    """group_data/all.py is the user's file: it sets no setting, so a new version never edits it."""
    assert group_data("all") == {}


def test_a_gateway_without_group_data_gets_the_declared_defaults(secrets_file):
    from tasks.config.settings import DEFAULTS, HostInput, build_all

    data = {"models": example_models(), "ollama_nodes": OLLAMA_NODES}
    settings = build_all([HostInput("gw1", lookup(data))], secrets_file, {"gw1": {}})["gw1"]
    assert settings.install_dir == "/opt/litellm" and settings.backup_keep == 7
    assert settings.litellm_image == DEFAULTS["litellm_image"]


@pytest.mark.parametrize("changes,field", [
    ({"tls": "on"}, "tls"),
    ({"tls_names": "gw.example.com"}, "tls_names"),
    ({"tls": "self-signed", "tls_port": 4000}, "tls_port/http_port"),
    ({"tls_image": "caddy:latest"}, "tls_image"),
    ({"redis_image": "valkey/valkey"}, "redis_image"),
    ({"roll_width": 0}, "roll_width"),
])
def test_tls_and_topology_settings_are_checked(build, changes, field):
    with pytest.raises(ConfigError) as error:
        build(**changes)
    [problem] = error.value.problems
    assert problem.startswith(f"host gw1: {field}: ")
