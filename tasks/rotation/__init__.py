"""Master-key rotation: `pyinfra inventory rotate.py` (docs/rotation.md).

One master key per inventory. A run rotates every gateway it reaches from the current key
(LITELLM_MASTER_KEY in the secrets file) to the pending one (LITELLM_MASTER_KEY_NEXT: generated
and written to the secrets file as the run's first operation, or chosen there by the user), and
writes the new key as LITELLM_MASTER_KEY only once every gateway of the inventory has proven it.
Until then the secrets file holds both keys, so a run killed at any point is finished by running
the same command again: the same pending key, never a third one.

On each gateway, in order (every step reads the host's state when it runs, so a re-run skips
what is already done):
  preflight   .env present, salt key present and equal to the controller's (it encrypts stored
              credentials and must never change), master key either the current or the pending one
  gate        no host changes anything unless every gateway passed (and, later, was backed up)
  backup      database modes: pg_dump custom format, 0600, in the gateway's backup directory
  probes      a short-lived virtual key in the database (to prove virtual keys survive), the keys
              for the host-side probes in a 0600 file, and a poller that measures the refusal window
  switch      new key into .env; in one transaction the master-key link moves to the new key's hash
              and the old master key's row goes (tasks.gateway.database.bootstrap); the proxy recreated
  proof       from the host, over HTTP: the new key accepted, the old one refused, the virtual key
              accepted
  rollback    when the restart or the proof failed: the old .env, the old link, the proxy recreated
              and proven on the old key; the host then fails with the reason (non-zero exit)
  controller  the secrets file's LITELLM_MASTER_KEY becomes the new key when every gateway has it

No key, old or new, is ever on a command line or in pyinfra's output: keys reach the host inside
files uploaded by tasks.lib.uploads.private_file or on psql's stdin, and every operation has a name=
(pyinfra prints the arguments of unnamed operations).

Test hook: LITELLM_DEPLOY_TEST_STOP_AFTER=<stage> (tasks.rotation.interrupt).

The modules, in the order a run meets them:
  pending     the controller's pending key in the secrets file, its completion, the runbook guard
  records     this run's Rotation and each gateway's HostRun
  stages      rotate_gateway, the @deploy rotate.py runs, stage by stage
  operations  preflight, gates, the proof's virtual key, the poller, the proof, the report
  facts       what is read on a host (hashes only) and the proof's verdict
  sql         the proof's virtual key: derivation and SQL
  workspace   the host-side directory and how its scripts run (tasks/remote/poller.py and proof.py)
  window      refusal-window arithmetic from the poller's log
  interrupt   the test hook
"""
