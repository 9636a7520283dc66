"""The one HTTP helper of the programs that run on a host or inside a container (this package).

Stdlib only, and no name of it starts with an underscore the programs might also use: program()
(tasks/remote/__init__.py) inlines this file in place of a program's `from tasks.remote.http import`
line, so each program is still one self-contained source sent to python3."""

import http.client
import json
import urllib.error
import urllib.request

JSON = "application/json"


def http_request(url, method=None, key=None, body=None, timeout=10):
    """(status, raw bytes, error text): one request, a Bearer key and a JSON body when given. Status 0
    means no HTTP answer at all; the error text then says why (never the request's key or body)."""
    headers = {"Content-Type": JSON}
    if key is not None:
        headers["Authorization"] = "Bearer " + key
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), ""
    except urllib.error.HTTPError as error:
        return error.code, error.read(), ""
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        return 0, b"", no_answer_text(error)


def no_answer_text(error):
    """Why a request got no HTTP answer: the system's words for a socket error, else the error's name
    (an HTTPException's text may quote what the other end sent)."""
    reason = getattr(error, "reason", None) or error
    if isinstance(reason, OSError) and reason.strerror:
        return "%s (errno %s)" % (reason.strerror.lower(), reason.errno)
    if isinstance(reason, (http.client.HTTPException, OSError)):
        return reason.__class__.__name__
    return str(reason) or reason.__class__.__name__


def json_or_text(raw, limit=300):
    """An answer's body: parsed JSON, else its text (at most `limit` characters)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")[:limit]
