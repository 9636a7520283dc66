# Your settings for every host. Each may be overridden per group (group_data/<group>.py) or per host
# (host data in `inventory`).
#
# Nothing is set here: the package's defaults live in the package (tasks/config/fields.py), so this
# file is yours and a new version of the package never touches it. Every setting, its type, default
# and meaning: docs/configuration.md. Write here only what you change, for example:
#
#   tls = "self-signed"
#   backup_schedule = "Mon..Fri 02:30"
#   virtual_keys = [{"alias": "everything-30d", "models": "all", "max_budget": 50, "budget_duration": "30d"}]
#
# Secrets never go here: they live in the secrets file (docs/secrets-and-keys.md).
