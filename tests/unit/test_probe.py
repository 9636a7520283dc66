"""The database check of the verify stage: /user/info for the admin user, read through the proxy."""

from tasks.remote import probe

CHECK = {"name": "gateway database", "kind": "admin_user", "url": "http://127.0.0.1:4000/user/info?user_id=admin",
         "key_env": "LITELLM_MASTER_KEY", "expect": "admin", "alias": "master-key"}


def test_admin_with_its_master_key_link_passes():
    payload = {"user_id": "admin", "user_info": {"user_role": "proxy_admin"},
               "keys": [{"key_alias": "master-key"}, {"key_alias": None}]}
    assert probe.evaluate(CHECK, 200, payload) is None


def test_a_user_that_is_not_proxy_admin_fails_naming_the_user():
    problem = probe.evaluate(CHECK, 200, {"user_info": {"user_role": "internal_user"}, "keys": []})
    assert problem.startswith("user admin is not a proxy_admin")


def test_a_missing_master_key_link_fails_listing_the_users_keys():
    problem = probe.evaluate(CHECK, 200, {"user_info": {"user_role": "proxy_admin"}, "keys": [{"key_alias": "other"}]})
    assert problem == "the master key is not linked to admin (its keys: ['other'])"


def test_a_proxy_without_its_database_fails():
    problem = probe.evaluate(CHECK, 500, {"error": {"message": "No connected db."}})
    assert problem == "HTTP 500: No connected db."
