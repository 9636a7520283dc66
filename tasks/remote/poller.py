"""The refusal-window poller, run on the host (python3 of the proxy image, on the host's network):

    python3 /rotation/poller.py BASE_URL LIFETIME INTERVAL

Every INTERVAL seconds it asks the proxy with the key that worked last (then the other one) and
appends "<seconds since start> <1 if a valid key was accepted, else 0>" to /rotation/poll.log, until
/rotation/stop exists or LIFETIME has passed. Keys come from /rotation/keys (0600), never argv.
Stdlib only: the proxy image has nothing else we can count on.
"""

import json
import os
import sys
import time

from tasks.remote.http import http_request


def accepted(base, key):
    return http_request(base + "/v1/models", key=key, timeout=2)[0] == 200


def main():
    base, lifetime, interval = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    keys = json.load(open("/rotation/keys"))
    order = [keys["old"], keys["new"]]
    out = open("/rotation/poll.log", "a")
    start = time.monotonic()
    while not os.path.exists("/rotation/stop") and time.monotonic() - start < lifetime:
        began = time.monotonic()
        ok = False
        for key in list(order):
            if accepted(base, key):
                ok = True
                if key != order[0]:
                    order.reverse()
                break
        out.write("%.3f %d\n" % (began - start, ok))
        out.flush()
        time.sleep(max(0.0, interval - (time.monotonic() - began)))


if __name__ == "__main__":
    main()
