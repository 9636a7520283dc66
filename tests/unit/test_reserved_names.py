"""Names and places the package owns are refused as user entries, by class, before any host is touched
(issue 30: a key_env of LITELLM_MASTER_KEY handed the master key out as a virtual key; backup_dir /tmp
was accepted; an entry written twice in the secrets file was resolved by the last one)."""

from dataclasses import replace

import pytest

from tasks.config import reserved
from tasks.config import secrets as S
from tasks.config.settings import ConfigError
from tasks.lib import render
from tests.unit.conftest import example_models


def refused(build, **data) -> list[str]:
    with pytest.raises(ConfigError) as error:
        build(**data)
    assert "nothing was changed on any host" in str(error.value)
    return error.value.problems


# Every entry the package writes or reads itself, and a sample of each reserved namespace.
PACKAGE_ENTRIES = sorted({*S.GENERATED, S.DATABASE_URL, S.REDIS_URL, S.MASTER_KEY_NEXT})
NAMESPACES = ["LITELLM_LOG", "POSTGRES_HOST_AUTH_METHOD", "PGPASSWORD", "REDIS_HOST", "PRISMA_QUERY_ENGINE_BINARY",
              "PATH", "LD_PRELOAD", "PYTHONPATH", "SSL_CERT_FILE", "STORE_MODEL_IN_DB"]


@pytest.mark.parametrize("name", PACKAGE_ENTRIES + NAMESPACES)
def test_a_virtual_keys_key_env_cannot_take_a_name_the_package_owns(build, name):
    problems = refused(build, virtual_keys=[{"alias": "handed-out", "key_env": name}])
    assert any(p.startswith(f"host gw1: virtual_keys['handed-out'].key_env: {name} is reserved") for p in problems), problems


@pytest.mark.parametrize("name", PACKAGE_ENTRIES + NAMESPACES)
def test_a_models_api_key_env_cannot_take_a_name_the_package_owns(build, secrets_file, name):
    secrets_file.write_text(secrets_file.read_text() + f'{name}="sk-provider-{"p" * 30}"\n')
    models = example_models() + [{"name": "gpt", "model": "openai/gpt-4o", "api_key_env": name}]
    problems = refused(build, models=models)
    assert any(p.startswith(f"host gw1: models[3].api_key_env: {name} is reserved") for p in problems), problems


def test_a_key_cannot_share_its_entry_with_a_providers_key(build):
    problems = refused(build, virtual_keys=[{"alias": "upstream-copy", "key_env": "UPSTREAM_LITELLM_API_KEY"}])
    assert any("key_env: UPSTREAM_LITELLM_API_KEY is also the api_key_env of model 'upstream'" in p
               for p in problems), problems


def test_user_names_outside_the_classes_stay_usable(build, secrets_file):
    secrets_file.write_text(secrets_file.read_text() + f'OPENAI_API_KEY="sk-openai-{"o" * 30}"\n')
    models = example_models() + [{"name": "gpt", "model": "openai/gpt-4o", "api_key_env": "OPENAI_API_KEY"}]
    settings = build(models=models, virtual_keys=[{"alias": "ci", "key_env": "CI_GATEWAY_KEY"}])
    assert settings.virtual_keys[0].key_env == "CI_GATEWAY_KEY"


@pytest.mark.parametrize("alias", sorted(reserved.ALIASES))
def test_aliases_the_bootstrap_and_litellm_own_are_refused_for_keys_and_teams(build, alias):
    problems = refused(build, virtual_keys=[{"alias": alias}], teams=[{"alias": alias}])
    assert any(p.startswith(f"host gw1: virtual_keys[{alias!r}].alias: {alias!r} is reserved") for p in problems)
    assert any(p.startswith(f"host gw1: teams[{alias!r}].alias: {alias!r} is reserved") for p in problems)


@pytest.mark.parametrize("field,value", [("backup_dir", "/tmp"), ("backup_dir", "/var/lib/docker/"),
                                         ("install_dir", "/etc"), ("install_dir", "/usr/local"),
                                         ("install_dir", "/home"), ("backup_dir", "/root")])
def test_directories_the_system_owns_are_refused(build, field, value):
    problems = refused(build, **{field: value})
    assert any(p.startswith(f"host gw1: {field}: {value!r} is a directory of the system itself") for p in problems)


def test_backups_do_not_share_the_install_directory(build):
    problems = refused(build, install_dir="/opt/litellm", backup_dir="/opt/litellm/")
    assert any(p.startswith("host gw1: backup_dir: '/opt/litellm/' is also install_dir") for p in problems)


def test_an_entry_written_twice_in_the_secrets_file_is_refused_with_its_lines(build, secrets_file):
    first, second = "sk-first-" + "a" * 40, "sk-second-" + "b" * 40
    secrets_file.write_text(secrets_file.read_text() + f'# mine\nLITELLM_MASTER_KEY="{first}"\n\n'
                            f'LITELLM_MASTER_KEY="{second}"\n')
    problems = refused(build)
    assert any("LITELLM_MASTER_KEY is written 2 times (lines 3, 5)" in p for p in problems), problems
    assert not any(first in p or second in p for p in problems)


def test_every_variable_the_package_writes_into_env_is_in_the_reserved_class(build, secrets_file):
    """The class holds what render writes: a new variable there without a reserved name fails here."""
    secrets_file.write_text(secrets_file.read_text() + f'REDIS_URL="redis://:{"r" * 20}@cache:6379"\n'
                            f'DATABASE_URL="postgresql://u:{"d" * 20}@db/litellm"\n')
    settings = build(proxy_base_url="https://gateway.test")
    variants = [settings, replace(settings, image_source="archives", tls="self-signed", tls_names=("gw.test",), proxy_base_url=""),
                replace(settings, database_mode="external", redis_url=True),
                replace(settings, database_mode="external", db_host="db1", redis_address="10.0.0.9")]
    written = set()
    for variant in variants:
        written |= set(render.container_env(variant))
    provider_keys = set(settings.provider_key_names)
    assert {name for name in written - provider_keys if reserved.entry_owner(name) is None} == set()
