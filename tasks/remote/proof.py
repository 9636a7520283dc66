"""The rotation's proof, run on the host (python3 of the proxy image, on the host's network):

    python3 /rotation/proof.py BASE_URL new|old SECONDS

Waits up to SECONDS for the expected key to be accepted, then prints one JSON line: the HTTP status
with the expected key ("accepted"), with the other one ("refused") and, after the switch, with the
proof's virtual key ("probe"). Keys come from /rotation/keys (0600), never argv. Stdlib only.
"""

import json
import sys
import time

from tasks.remote.http import http_request


def status(base, key):
    return http_request(base + "/v1/models", key=key, timeout=10)[0]


def main():
    base, expect, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    keys = json.load(open("/rotation/keys"))
    good, bad = (keys["new"], keys["old"]) if expect == "new" else (keys["old"], keys["new"])
    deadline = time.monotonic() + seconds
    while True:
        accepted = status(base, good)
        if accepted == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    result = {"accepted": accepted, "refused": status(base, bad)}
    if expect == "new" and keys.get("probe"):
        result["probe"] = status(base, keys["probe"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
