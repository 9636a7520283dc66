"""Settings: every bad input is refused with the field and the fix, before any operation exists."""

import pytest

from tasks.settings import ConfigError
from tests.unit.conftest import UPSTREAM_KEY, example_models, group_data


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
    from tasks import secrets

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
